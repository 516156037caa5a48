using System.CommandLine;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Haven.Agent;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Protocol;
using Haven.Server;
using Haven.Server.Jobs;

namespace Haven.Cli.Commands;

/// <summary>
/// A first run with no setup: a Haven server on embedded defaults (SQLite, repositories in a local folder) and an agent
/// on this machine, in one process. On the first run it makes the tenant's repository with a generated password,
/// enrols the agent with the repository key and gives it a plan for a folder. Each run then shows the agent's ready
/// signal starting a backup job, its progress and summary as the server records them, and an administered restore
/// of that snapshot, verified; then the server and agent keep running (until Ctrl-C) for the administrator's commands.
/// </summary>
public static class QuickstartCommand
{
    private const string PlanName = "quickstart";

    public static Command Build()
    {
        var source = new Argument<string?>("source") { Description = "Folder the first plan backs up (default: the current folder)", Arity = ArgumentArity.ZeroOrOne };
        var home = new Option<string?>("--home") { Description = "Where the quickstart server and agent keep their state (default ~/.local/share/haven/quickstart, env HAVEN_QUICKSTART_HOME)" };
        var listen = new Option<string?>("--listen") { Description = "Address and port of the server (default: a free port on 127.0.0.1, kept for later runs)" };
        var once = new Option<bool>("--once") { Description = "Stop the server and agent after the first backup and restore instead of running until Ctrl-C" };
        var command = new Command("quickstart", """
            Try Haven with no setup: start a server with a local agent, watch the agent back up a folder as a job the server
            administers, restore it through the server, then keep both running for 'haven admin' commands (Ctrl-C stops)

            Examples:
              haven quickstart                 # back up the current folder
              haven quickstart ~/Documents --once
            """) { source, home, listen, once };
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            string dir = Path.GetFullPath(ctx.Parse.GetValue(home) ?? CliContext.Env("HAVEN_QUICKSTART_HOME")
                ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share", "haven", "quickstart"));
            string src = Path.GetFullPath(ctx.Parse.GetValue(source) ?? Environment.CurrentDirectory);
            if (!Directory.Exists(src))
            {
                throw new HavenException(ErrorCode.SourceNotFound, $"the folder {src} does not exist", "name a folder to back up: haven quickstart FOLDER");
            }

            Directory.CreateDirectory(dir);
            var agentState = new AgentState(Path.Combine(dir, "agent"));
            string passwordFile = Path.Combine(dir, "password");
            string tokenFile = Path.Combine(dir, "admin-token");
            var o = ctx.Output;

            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
            // Later runs listen where the agent was enrolled, so its identity stays valid.
            string address = ctx.Parse.GetValue(listen)
                ?? (agentState.IsEnrolled ? new Uri(agentState.LoadIdentity().ServerUrl).Authority : "127.0.0.1:0");
            await using var server = await HavenServer.StartAsync(new ServerOptions
            {
                DataDirectory = Path.Combine(dir, "server"),
                Listen = address,
                HavenLogLevel = Microsoft.Extensions.Logging.LogLevel.Warning, // the quickstart tells what happens itself
                // Every start of the agent is a ready signal that runs the plan, so each quickstart makes a backup.
                Jobs = new JobOptions { TickInterval = TimeSpan.FromSeconds(1), ReadyMinInterval = TimeSpan.Zero },
            }, stop.Token);
            if (server.FirstAdmin is { } first)
            {
                WriteSecret(tokenFile, first.ApiToken);
                o.Line($"1. started a Haven server at {server.Url} (data in {Path.Combine(dir, "server")}, SQLite, repositories in a folder)");
                o.Line($"   first administrator: {first.Name}, password {first.Password} (shown once; its API token is in {tokenFile})");
            }
            else
            {
                o.Line($"1. started the Haven server at {server.Url} (data in {Path.Combine(dir, "server")})");
            }

            if (!File.Exists(tokenFile))
            {
                throw new HavenException(ErrorCode.Usage, $"{tokenFile} is missing, so the quickstart cannot administer its server", $"start afresh: remove {dir}");
            }

            using var api = new ApiClient(server.Url, server.Ca.Certificate, bearerToken: File.ReadAllText(tokenFile).Trim());
            var tenant = (await api.GetAsync<List<TenantInfo>>("api/v1/tenants", stop.Token)).Single(t => t.Name == "default");
            string client = agentState.IsEnrolled ? agentState.LoadIdentity().ClientName : ClientName();
            if (!agentState.IsEnrolled)
            {
                await SetUpAsync(o, api, server, tenant, agentState, client, passwordFile, src, dir, stop.Token);
            }
            else
            {
                o.Line($"2. the agent {client} is enrolled (state in {agentState.Folder})");
            }

            var plan = (await api.GetAsync<List<PlanInfo>>($"api/v1/tenants/{tenant.Id}/plans", stop.Token)).FirstOrDefault(p => p.Spec.Name == PlanName);
            if (plan is not null && !plan.Spec.Paths.Contains(src))
            {
                o.Line($"   (the plan '{PlanName}' backs up {string.Join(", ", plan.Spec.Paths)}; for {src}: haven admin plan-create --tenant default --client {client} NAME {src})");
            }

            // The agent runs in this process exactly as 'haven agent run' does: ready signal, long poll, jobs, reports.
            var before = (await api.GetAsync<List<JobInfo>>($"api/v1/tenants/{tenant.Id}/jobs?limit=1000", stop.Token)).Select(j => j.Id).ToHashSet();
            string agentLog = Path.Combine(dir, "agent.log");
            var log = new StreamWriter(agentLog, append: true) { AutoFlush = true };
            using var agentStop = CancellationTokenSource.CreateLinkedTokenSource(stop.Token);
            var agent = Task.Run(() => new AgentRunner(agentState, new AgentRunOptions { Log = line => { lock (log) { log.WriteLine(line); } } }).RunAsync(agentStop.Token), CancellationToken.None);
            int exit = ExitCodes.Success;
            try
            {
                o.Line($"3. the agent started (log in {agentLog}) and sent its ready signal; the server queued the plan's backup job:");
                var backup = await WatchAsync(o, api, tenant.Id, await NextJobAsync(api, tenant.Id, before, agent, stop.Token), agent, stop.Token);
                exit = ExitCode(backup);
                if (backup.SnapshotId is { } snapshot)
                {
                    foreach (string old in Directory.GetDirectories(dir, "restore-*"))
                    {
                        Haven.Core.Posix.PosixTree.Delete(old);
                    }

                    string target = Path.Combine(dir, "restore-" + DateTime.Now.ToString("yyyyMMdd-HHmmss"));
                    o.Line($"4. an administered restore of snapshot {snapshot[..8]} onto {client}, into {target}:");
                    var restore = await api.PostAsync<JobInfo>($"api/v1/tenants/{tenant.Id}/restores", new RestoreRequest(snapshot, client, target), stop.Token);
                    restore = await WatchAsync(o, api, tenant.Id, restore, agent, stop.Token);
                    exit = Math.Max(exit, ExitCode(restore));
                }

                o.Line();
                o.Line("The server keeps the job records; administer it from another terminal:");
                if (Environment.ProcessPath is { } exe && Path.GetFileName(exe) == "haven")
                {
                    o.Line($"   alias haven={exe}");
                }

                o.Line($"   export HAVEN_SERVER={server.Url} HAVEN_SERVER_CA={server.Ca.Fingerprint} HAVEN_ADMIN_TOKEN=$(cat {tokenFile})");
                o.Line($"   haven admin jobs --tenant default | haven admin run --tenant default {client} --wait | haven admin plans --tenant default");
                o.Line($"   HAVEN_PASSWORD_FILE={passwordFile} haven snapshots -r haven:{server.Url}default");
                o.Line($"   API description: {server.Url}api/v1/openapi.json");
                if (!ctx.Parse.GetValue(once))
                {
                    o.Line("The server and the agent keep running (the plan also runs daily); Ctrl-C stops them.");
                    Console.Out.Flush();
                    await Task.WhenAny(agent, Task.Delay(Timeout.Infinite, stop.Token).ContinueWith(_ => { }, TaskScheduler.Default));
                    o.Line("stopping");
                }
            }
            finally
            {
                agentStop.Cancel();
                await agent.ContinueWith(_ => { }, TaskScheduler.Default);
                lock (log)
                {
                    log.Dispose();
                }
            }

            return ct.IsCancellationRequested && !ctx.Parse.GetValue(once) ? ExitCodes.Success : exit;
        });
        return command;
    }

    /// <summary>First run: the tenant's repository, an enrolment token carrying its key, the agent's enrolment, the plan.</summary>
    private static async Task SetUpAsync(Output o, ApiClient api, HavenServer server, TenantInfo tenant, AgentState agentState, string client, string passwordFile, string src, string dir, CancellationToken ct)
    {
        if (!File.Exists(passwordFile))
        {
            WriteSecret(passwordFile, Convert.ToBase64String(RandomNumberGenerator.GetBytes(24)));
        }

        string password = CliContext.ReadPasswordFile(passwordFile);
        await using (var store = TenantRepository.Open(api, tenant.Id))
        {
            if (await store.StatAsync(Haven.Storage.StoreHandle.Config, ct) is null)
            {
                await (await Haven.Repository.Repository.InitAsync(store, password, new Haven.Repository.RepositoryInitOptions(), null, ct)).DisposeAsync();
                o.Line($"   created the repository of tenant 'default' on the server (password generated into {passwordFile})");
            }
        }

        var (keyId, secret) = await TenantRepository.AddAgentKeyAsync(api, tenant.Id, password, ct);
        var token = await api.PostAsync<EnrollmentTokenInfo>($"api/v1/tenants/{tenant.Id}/enrollment-tokens", new CreateEnrollmentTokenRequest(client, RepositoryKeyId: keyId), ct);
        string tokenText = (EnrollmentToken.Parse(token.Token) with { KeySecret = secret }).ToString();
        await AgentClient.EnrollAsync(agentState, server.Url, tokenText, client, ct);
        o.Line($"2. enrolled this machine as client '{client}': the server's CA issued its certificate, the token gave it the repository key");

        var spec = new PlanSpec(PlanName, [src], Excludes: [dir], Schedule: "@daily", RunOnReady: true, Retention: new RetentionSpec(KeepLast: 10, KeepDaily: 7), Client: client);
        await api.PostAsync<PlanInfo>($"api/v1/tenants/{tenant.Id}/plans", spec, ct);
        o.Line($"   plan '{PlanName}' for {client}: back up {src} daily and whenever the agent says it is ready, keep 10 + 7 daily");
    }

    /// <summary>The first job that was not there before the agent started (the ready signal queues it).</summary>
    private static async Task<JobInfo> NextJobAsync(ApiClient api, string tenantId, HashSet<string> before, Task agent, CancellationToken ct)
    {
        var deadline = DateTimeOffset.UtcNow.AddMinutes(2);
        while (true)
        {
            var jobs = await api.GetAsync<List<JobInfo>>($"api/v1/tenants/{tenantId}/jobs?limit=20", ct);
            if (jobs.Where(j => !before.Contains(j.Id)).OrderBy(j => j.Queued).FirstOrDefault() is { } job)
            {
                return job;
            }

            if (agent.IsCompleted || DateTimeOffset.UtcNow > deadline)
            {
                await agent.ConfigureAwait(false); // its failure, if it failed
                throw new HavenException(ErrorCode.Failed, "the server queued no job for the agent's ready signal", "see the agent's log, agent.log in the quickstart folder");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(300), ct);
        }
    }

    /// <summary>Prints a job's states and progress as the server records them, until it ends.</summary>
    private static async Task<JobInfo> WatchAsync(Output o, ApiClient api, string tenantId, JobInfo job, Task agent, CancellationToken ct)
    {
        string? shown = null;
        var lastProgress = DateTimeOffset.MinValue;
        while (true)
        {
            if (job.State != shown)
            {
                o.Line($"   job {job.Id[..12]} ({job.Kind}, {job.Trigger}): {job.State}");
                shown = job.State;
            }
            else if (job.Progress is { } p && !JobStates.IsFinal(job.State) && p.Time > lastProgress)
            {
                o.Line($"     {Units.Count(p.FilesDone)} files, {Units.Bytes(p.BytesDone)} so far");
                lastProgress = p.Time;
            }

            if (JobStates.IsFinal(job.State))
            {
                o.Line("   " + Summary(job));
                return job;
            }

            if (agent.IsCompleted)
            {
                await agent.ConfigureAwait(false);
                throw new HavenException(ErrorCode.Failed, $"the agent stopped while job {job.Id[..12]} was {job.State}", "see the agent's log, agent.log in the quickstart folder");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(500), ct);
            job = await api.GetAsync<JobInfo>($"api/v1/tenants/{tenantId}/jobs/{job.Id}", ct);
        }
    }

    private static string Summary(JobInfo job)
    {
        var s = job.Stats;
        string duration = job is { Started: { } a, Finished: { } b } ? $" in {(b - a).TotalSeconds:0.0} s" : "";
        return job.Kind == "restore"
            ? $"{job.State}{duration}: {job.Message}"
            : $"{job.State}{duration}: snapshot {job.SnapshotId?[..8] ?? "none"}"
              + (s is null ? "" : $", {Units.Bytes(s.BytesProcessed)} read; files {Units.Count(s.FilesNew)} new, {Units.Count(s.FilesChanged)} changed, {Units.Count(s.FilesUnmodified)} unchanged; {Units.Bytes(s.BytesAdded)} new data, {Units.Bytes(s.BytesSkippedByCatalog)} already on the server")
              + (job.Message is { } m ? $" ({m})" : "");
    }

    private static int ExitCode(JobInfo job) => job.State switch
    {
        JobStates.Succeeded => ExitCodes.Success,
        JobStates.Partial => ExitCodes.PartialBackup,
        _ => ExitCodes.Failed,
    };

    private static string ClientName()
    {
        string host = Environment.MachineName.ToLowerInvariant();
        return host is { Length: >= 1 and <= 64 } && char.IsAsciiLetterOrDigit(host[0]) && host.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-') ? host : "this-machine";
    }

    private static void WriteSecret(string path, string text)
    {
        File.WriteAllText(path, text);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }
}
