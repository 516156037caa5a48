using System.Text.Json;
using Haven.Protocol;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>
/// Issue 3's acceptance, through real processes on loopback with real TLS: a server, two <c>haven agent run</c>
/// daemons, and <c>haven admin</c>. Jobs started by a schedule, by a ready signal and by "run now" run and are
/// recorded; their end is confirmed by webhook and by email; a restore lands on the other agent; an agent killed
/// mid-backup leaves an interrupted job that the next run resumes; a server restarted mid-job loses nothing.
/// On SQLite and on PostgreSQL.
/// </summary>
public sealed class AdministeredJobsTests
{
    public static TheoryData<string> Databases => [.. TestDatabases.Kinds];

    /// <summary>A server with short scheduler timings, the tenant's repository, and agents enrolled with its key.</summary>
    private sealed class Fleet : IDisposable
    {
        /// <param name="database">A PostgreSQL connection string, or null for SQLite.</param>
        public Fleet(string? database, int? port = null, params string[] serverArgs)
        {
            Cli = new HavenCli();
            Cli.Environment["HAVEN_SCHEDULER_INTERVAL"] = "1";
            // Long enough that a test's own kills and restarts are seen by the agent's next poll, not by silence.
            Cli.Environment["HAVEN_JOB_STALE_AFTER"] = "30";
            Cli.Environment["HAVEN_AGENT_PROGRESS_INTERVAL"] = "1";
            Cli.Environment["HAVEN_AGENT_RETRY_DELAY"] = "1";
            Listen = $"127.0.0.1:{port ?? 0}";
            ServerArgs = serverArgs;
            try
            {
                Server = new RunningServer(Cli, database, listen: Listen, extra: serverArgs);
                Cli.Expect(0, "init", "-r", Server.HostedRepository);
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        public HavenCli Cli { get; }

        public string Listen { get; }

        public string[] ServerArgs { get; }

        public RunningServer Server { get; set; } = null!;

        public List<RunningAgent> Agents { get; } = [];

        public string Enrol(string name) => Server.Enrol(Cli, name).State;

        public RunningAgent Start(string state)
        {
            var agent = new RunningAgent(Cli, state);
            Agents.Add(agent);
            return agent;
        }

        public List<JobInfo> Jobs(string? client = null)
        {
            var args = new List<string> { "admin", "jobs", "--tenant", "default", "--json" };
            if (client is not null)
            {
                args.AddRange(["--client", client]);
            }

            return JsonSerializer.Deserialize<List<JobInfo>>(Cli.Expect(0, [.. args]).Stdout, ProtocolJson.Options)!;
        }

        /// <summary>Bytes the tenant's repository holds, as the server counts them.</summary>
        public long Usage() =>
            JsonSerializer.Deserialize<List<RepositoryInfo>>(Cli.Expect(0, "admin", "repository", "--tenant", "default", "--json").Stdout, ProtocolJson.Options)!.Single().UsageBytes;

        /// <summary>Waits (up to <paramref name="seconds"/>) for a job that matches; fails with the jobs and agent logs.</summary>
        public JobInfo WaitFor(Func<JobInfo, bool> match, string what, int seconds = 90)
        {
            var deadline = DateTime.UtcNow.AddSeconds(seconds);
            List<JobInfo> jobs;
            do
            {
                jobs = Jobs();
                if (jobs.FirstOrDefault(match) is { } found)
                {
                    return found;
                }

                Thread.Sleep(500);
            }
            while (DateTime.UtcNow < deadline);

            throw new Xunit.Sdk.XunitException($"no job {what} within {seconds} s; jobs:\n"
                + string.Join("\n", jobs.Select(j => $"{j.Id[..8]} {j.Kind} {j.Trigger} {j.State} {j.Message}"))
                + "\nagent logs:\n" + string.Join("\n---\n", Agents.Select(a => a.Log)));
        }

        public void Dispose()
        {
            foreach (var agent in Agents)
            {
                agent.Dispose();
            }

            Server?.Dispose();
            Cli.Dispose();
        }
    }

    private static Fleet? NewFleet(string kind, int? port = null, params string[] serverArgs)
    {
        var database = TestDatabases.Create(kind);
        return database == TestDatabases.Skip ? null : new Fleet(database, port, serverArgs);
    }

    [Theory]
    [MemberData(nameof(Databases))]
    public void ScheduledReadyAndRunNowJobs_RunAndAreRecorded_MessagesArrive_AndARestoreLandsOnTheOtherAgent(string kind)
    {
        using var webhook = new WebhookSink();
        using var smtp = new SmtpSink();
        using var fleet = NewFleet(kind, null, "--smtp", $"smtp://127.0.0.1:{smtp.Port}?from=haven@test.invalid");
        if (fleet is null) return;
        var cli = fleet.Cli;
        fleet.Cli.Expect(0, "admin", "notify-add", "--tenant", "default", "--webhook", webhook.Url);
        fleet.Cli.Expect(0, "admin", "notify-add", "--tenant", "default", "--email", "ops@test.invalid");
        TestTree.CreateHardCases(cli.Source, includeLargeFile: false, seed: 11);
        string laptop = fleet.Enrol("laptop");
        string desktop = fleet.Enrol("desktop");

        // The laptop's plan runs on a schedule; the desktop's when it says it is ready (at the agent's start).
        cli.Expect(0, "admin", "plan-create", "--tenant", "default", "nightly", "--client", "laptop", "--path", cli.Source, "--schedule", "@every 4s", "--exclude", "*.nothing");
        cli.Expect(0, "admin", "group-create", "--tenant", "default", "desks", "--client", "desktop");
        cli.Expect(0, "admin", "plan-create", "--tenant", "default", "on-arrival", "--group", "desks", "--path", cli.Source, "--on-ready");
        fleet.Start(laptop);
        fleet.Start(desktop);

        var scheduled = fleet.WaitFor(j => j.Trigger == "schedule" && j.State == JobStates.Succeeded, "started by the schedule to succeed");
        var ready = fleet.WaitFor(j => j.Trigger == "ready" && j.State == JobStates.Succeeded, "started by the ready signal to succeed");
        cli.Expect(0, "admin", "plan-delete", "--tenant", "default", "nightly"); // no more scheduled runs from here on

        // "Run now" by an administrator, waited for.
        var runNow = JsonSerializer.Deserialize<List<JobInfo>>(cli.Expect(0, "admin", "run", "--tenant", "default", "desktop", "--wait", "--json").Stdout, ProtocolJson.Options)!.Single();
        Assert.Equal(JobStates.Succeeded, runNow.State);
        Assert.Equal("manual", runNow.Trigger);

        foreach (var job in new[] { scheduled, ready, runNow })
        {
            Assert.NotNull(job.SnapshotId);
            Assert.NotNull(job.Started);
            Assert.NotNull(job.Finished);
            Assert.True(job.Stats!.BytesProcessed > 0);
            Assert.Equal(0, job.Stats.Errors);
        }

        Assert.True(runNow.Stats!.FilesUnmodified > 0, "the second backup of the desktop found its files unchanged");

        // The laptop's snapshot restored onto the desktop by an administrator reproduces the files.
        string target = Path.Combine(cli.Root, "restored");
        var restore = JsonSerializer.Deserialize<List<JobInfo>>(
            cli.Expect(0, "admin", "restore", "--tenant", "default", scheduled.SnapshotId!, "--client", "desktop", "--target", target, "--wait", "--json").Stdout, ProtocolJson.Options)!.Single();
        Assert.Equal(JobStates.Succeeded, restore.State);
        HavenCli.AssertRestored(cli.Source, target);

        // Every end was confirmed by webhook and by mail.
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((webhook.Bodies.Count < 4 || smtp.Messages.Count < 4) && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(200);
        }

        var events = webhook.Bodies.Select(b => JsonDocument.Parse(b).RootElement).ToList();
        foreach (var job in new[] { scheduled, ready, runNow, restore })
        {
            Assert.Contains(events, e => e.GetProperty("job").GetProperty("id").GetString() == job.Id && e.GetProperty("event").GetString() == "job.succeeded");
            Assert.Contains(smtp.Messages, m => m.To == "ops@test.invalid" && m.Message.Contains(job.Id, StringComparison.Ordinal));
        }

        Assert.Contains(smtp.Messages, m => m.Message.Contains("Subject: [Haven] laptop: backup succeeded (nightly)", StringComparison.Ordinal));
    }

    [Theory]
    [MemberData(nameof(Databases))]
    public void TheServer_AppliesAPlansRetention_ForgetsWithoutAKey_AndPrunesOnceTheTenantGivesItOne(string kind)
    {
        using var fleet = NewFleet(kind);
        if (fleet is null) return;
        var cli = fleet.Cli;
        string state = fleet.Enrol("laptop");
        cli.Expect(0, "admin", "plan-create", "--tenant", "default", "docs", "--client", "laptop", "--path", cli.Source, "--keep-last", "2");
        fleet.Start(state);

        // Four backups; the data of the first lives only in the first snapshot, so it is garbage once that goes.
        var jobs = new List<JobInfo>();
        for (int i = 0; i < 4; i++)
        {
            TestData.WriteRandomFiles(Directory.CreateDirectory(Path.Combine(cli.Source, $"gen{i}")).FullName, 3, 300_000, seed: 40 + i);
            if (i == 1)
            {
                Directory.Delete(Path.Combine(cli.Source, "gen0"), recursive: true);
            }

            var job = JsonSerializer.Deserialize<List<JobInfo>>(cli.Expect(0, "admin", "run", "--tenant", "default", "laptop", "--wait", "--json").Stdout, ProtocolJson.Options)!.Single();
            Assert.Equal(JobStates.Succeeded, job.State);
            jobs.Add(job);
        }

        // Without a key the server forgets by its job records but cannot prune.
        var forget = JsonSerializer.Deserialize<List<MaintenanceResult>>(cli.Expect(0, "admin", "maintenance", "--tenant", "default", "--json").Stdout, ProtocolJson.Options)!.Single();
        Assert.Equal(jobs.Take(2).Select(j => j.SnapshotId!).Order(), forget.Forgotten.Order());
        Assert.False(forget.Pruned);
        Assert.Contains("no key", forget.PruneSkipped);
        var left = cli.Expect(0, "snapshots", "-r", fleet.Server.HostedRepository, "--json").Json.AsArray().Select(s => s!["id"]!.ToString()).Order().ToList();
        Assert.Equal(jobs.Skip(2).Select(j => j.SnapshotId!).Order(), left);
        Assert.All(fleet.Jobs("laptop").Where(j => forget.Forgotten.Contains(j.SnapshotId!)), j => Assert.NotNull(j.Forgotten));

        // The tenant gives the server a key: the next maintenance prunes the first generation's data.
        cli.Expect(0, "admin", "repository", "--tenant", "default", "--server-key");
        Assert.Contains("the server holds a key", cli.Expect(0, "admin", "repository", "--tenant", "default").Stdout);
        long before = fleet.Usage();
        var prune = JsonSerializer.Deserialize<List<MaintenanceResult>>(cli.Expect(0, "admin", "maintenance", "--tenant", "default", "--json").Stdout, ProtocolJson.Options)!.Single();
        Assert.True(prune.Pruned, prune.PruneSkipped);
        Assert.True(prune.BytesFreed >= 900_000, $"freed {prune.BytesFreed} bytes");
        Assert.True(fleet.Usage() <= before - 900_000, $"usage {before} -> {fleet.Usage()}");
        cli.Expect(0, "check", "--read-data", "-r", fleet.Server.HostedRepository);

        // The pruned chunks left the catalog: a backup that needs them again uploads them, and the repository is whole.
        TestData.WriteRandomFiles(Directory.CreateDirectory(Path.Combine(cli.Source, "gen0")).FullName, 3, 300_000, seed: 40);
        var again = JsonSerializer.Deserialize<List<JobInfo>>(cli.Expect(0, "admin", "run", "--tenant", "default", "laptop", "--wait", "--json").Stdout, ProtocolJson.Options)!.Single();
        Assert.Equal(JobStates.Succeeded, again.State);
        Assert.True(again.Stats!.BytesAdded >= 900_000, $"added {again.Stats.BytesAdded}");
        cli.Expect(0, "check", "--read-data", "-r", fleet.Server.HostedRepository);
        string target = Path.Combine(cli.Root, "restored");
        cli.Expect(0, "restore", "latest", "-r", fleet.Server.HostedRepository, "--target", target);
        HavenCli.AssertRestored(cli.Source, target);

        // Withdrawn, the key file is gone from the repository and the server prunes no more.
        cli.Expect(0, "admin", "repository", "--tenant", "default", "--withdraw-server-key");
        Assert.Contains("holds no key", cli.Expect(0, "admin", "repository", "--tenant", "default").Stdout);
        var audit = cli.Expect(0, "admin", "audit", "--json").Stdout;
        Assert.Contains("repository.forget", audit);
        Assert.Contains("repository.prune", audit);
    }

    [Theory]
    [MemberData(nameof(Databases))]
    public void AnImagePlan_BacksUpADiskIncrementallyThroughTheAgent_AndAnImageRestoreJobGrowsItOntoALargerFile(string kind)
    {
        using var fleet = NewFleet(kind);
        if (fleet is null) return;
        var cli = fleet.Cli;
        string disk = Path.Combine(cli.Root, "disk.img");
        ImageTests.Sh($"dd if=/dev/zero of={disk} bs=1M count=64 status=none && mkfs.ext4 -q -F -E nodiscard {disk}");
        string files = Path.Combine(cli.Root, "files");
        TestData.WriteRandomFiles(Directory.CreateDirectory(files).FullName, 24, 128 * 1024, seed: 31);
        ImageTests.WithMount(cli, disk, mount => ImageTests.Sh($"cp -a {files}/. {mount}/"));
        string state = fleet.Enrol("vmhost");

        // An image plan is one disk, without excludes.
        var refused = cli.Run("admin", "plan-create", "--tenant", "default", "two", "--client", "vmhost", "--path", disk, "--path", "/dev/null", "--image");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("one disk", refused.Stderr);
        cli.Expect(0, "admin", "plan-create", "--tenant", "default", "disk", "--client", "vmhost", "--path", disk, "--image", "--block-size", "128K");
        Assert.Contains(" image ", cli.Expect(0, "admin", "plans", "--tenant", "default").Stdout);
        fleet.Start(state);

        JobInfo Run() => JsonSerializer.Deserialize<List<JobInfo>>(cli.Expect(0, "admin", "run", "--tenant", "default", "vmhost", "--wait", "--json").Stdout, ProtocolJson.Options)!.Single();
        var first = Run();
        Assert.True(first.State == JobStates.Succeeded, first.Message);
        Assert.Contains("generation 1", first.Message);
        Assert.InRange(first.Stats!.BytesProcessed, 3L << 20, 40L << 20); // the used blocks only

        // Untouched, the disk is not read again; changed through a mount, it is, and only changed blocks are stored.
        var untouched = Run();
        Assert.Equal(0, untouched.Stats!.BytesProcessed);
        Assert.Contains("nothing was read", untouched.Message);
        string changed = Path.Combine(cli.Root, "changed");
        TestData.WriteRandomFiles(Directory.CreateDirectory(changed).FullName, 2, 128 * 1024, seed: 32);
        ImageTests.WithMount(cli, disk, mount => ImageTests.Sh($"cp -a {changed}/. {mount}/"));
        var third = Run();
        Assert.True(third.State == JobStates.Succeeded, third.Message);
        Assert.Contains("generation 3", third.Message);
        Assert.InRange(third.Stats!.BytesAdded, 256 * 1024, 4L << 20);
        var info = cli.Expect(0, "image", "info", third.SnapshotId!, "-r", fleet.Server.HostedRepository, "--json").Json;
        Assert.Equal(128 * 1024, (int)info["block_size"]!);
        Assert.Equal(3u, (uint)info["generation"]!);

        // Restored by an administrator onto a larger file of the client, grown to fill it.
        string target = Path.Combine(cli.Root, "restored.img");
        ImageTests.Sh($"truncate -s 96M {target}");
        var restore = JsonSerializer.Deserialize<List<JobInfo>>(
            cli.Expect(0, "admin", "restore", "--tenant", "default", third.SnapshotId!, "--client", "vmhost", "--target", target, "--grow", "--wait", "--json").Stdout, ProtocolJson.Options)!.Single();
        Assert.True(restore.State == JobStates.Succeeded, restore.Message);
        Assert.Contains("ext filesystem grown", restore.Message);
        ImageTests.Sh($"e2fsck -fn {target}");
        string expected = Path.Combine(cli.Root, "expected");
        ImageTests.Sh($"mkdir {expected} && cp -a {files}/. {changed}/. {expected}/");
        ImageTests.WithMount(cli, target, _ => { }, readOnly: true, compareWith: expected);
    }

    [Theory]
    [MemberData(nameof(Databases))]
    public void AnAgentKilledMidBackup_LeavesAnInterruptedJob_AndTheNextRunSendsOnlyWhatIsMissing(string kind)
    {
        using var fleet = NewFleet(kind);
        if (fleet is null) return;
        var cli = fleet.Cli;
        // Random data that does not compress, sent at 4 MB/s: the backup takes long enough to be cut off.
        Directory.CreateDirectory(Path.Combine(cli.Source, "big"));
        TestData.WriteRandomFiles(Path.Combine(cli.Source, "big"), 6, 8 << 20, seed: 100);

        long total = 6L * (8 << 20);
        string state = fleet.Enrol("server1");
        cli.Expect(0, "admin", "plan-create", "--tenant", "default", "slow", "--client", "server1", "--path", cli.Source, "--bandwidth", "4M");
        var agent = fleet.Start(state);
        cli.Expect(0, "admin", "run", "--tenant", "default", "server1");
        fleet.WaitFor(j => j.State == JobStates.Running, "running", 60);
        // Kill it once at least one pack has arrived on the server, and before the backup ends.
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (fleet.Usage() < 8 << 20 && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(500);
        }

        Assert.True(fleet.Usage() >= 8 << 20, "no pack reached the server within 60 s");

        agent.Kill();
        Assert.Equal(JobStates.Running, fleet.Jobs().Single().State);

        // The restarted agent's first poll tells the server the job it was running is gone.
        fleet.Start(state);
        var interrupted = fleet.WaitFor(j => j.State == JobStates.Interrupted, "marked interrupted", 30);
        Assert.Contains("agent stopped", interrupted.Message);

        var resumed = JsonSerializer.Deserialize<List<JobInfo>>(cli.Expect(0, "admin", "run", "--tenant", "default", "server1", "--wait", "--json").Stdout, ProtocolJson.Options)!.Single();
        Assert.Equal(JobStates.Succeeded, resumed.State);
        Assert.Contains("resumed", resumed.Message);
        Assert.True(resumed.Stats!.BytesAdded < total, $"the resumed run added {resumed.Stats.BytesAdded} of {total} bytes: the packs of the killed run were reused");

        // Nothing was stored twice: the tenant's repository holds about one copy of the data.
        Assert.InRange(fleet.Usage(), total, total + (total / 5));
        cli.Environment["HAVEN_REPOSITORY"] = fleet.Server.HostedRepository;
        cli.Expect(0, "check", "--read-data");
    }

    [Fact]
    public void TheServerRestartedMidJob_LosesNothing_AndTheJobResolves()
    {
        int port = RunningServer.FreePort();
        using var fleet = NewFleet("sqlite", port)!;
        var cli = fleet.Cli;
        Directory.CreateDirectory(Path.Combine(cli.Source, "big"));
        TestData.WriteRandomFiles(Path.Combine(cli.Source, "big"), 4, 8 << 20, seed: 200);

        string state = fleet.Enrol("db1");
        cli.Expect(0, "admin", "plan-create", "--tenant", "default", "slow", "--client", "db1", "--path", cli.Source, "--bandwidth", "4M");
        fleet.Start(state);
        cli.Expect(0, "admin", "run", "--tenant", "default", "db1");
        var running = fleet.WaitFor(j => j.State == JobStates.Running && j.Progress is { BytesDone: > 8 << 20 }, "running with some data sent", 60);

        fleet.Server.Kill();
        Thread.Sleep(2000); // an outage the agent notices: its uploads and reports fail and are retried
        fleet.Server = new RunningServer(cli, null, firstStart: false, listen: fleet.Listen, extra: fleet.ServerArgs);

        var done = fleet.WaitFor(j => j.Id == running.Id && j.State is JobStates.Succeeded, "resolved as succeeded after the restart", 120);
        Assert.NotNull(done.SnapshotId);
        string target = Path.Combine(cli.Root, "restored");
        cli.Environment["HAVEN_REPOSITORY"] = fleet.Server.HostedRepository;
        cli.Expect(0, "restore", done.SnapshotId!, "--target", target);
        HavenCli.AssertRestored(cli.Source, target);
    }
}
