using System.Diagnostics;
using Haven.Core;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

public class RobustnessTests
{
    private static long PackBytes(HavenCli cli) =>
        Directory.Exists(Path.Combine(cli.Repository, "data"))
            ? Directory.GetFiles(Path.Combine(cli.Repository, "data"), "*", SearchOption.AllDirectories).Where(f => !Path.GetFileName(f).StartsWith('.')).Sum(f => new FileInfo(f).Length)
            : 0;

    private static int PackCount(HavenCli cli) =>
        Directory.Exists(Path.Combine(cli.Repository, "data"))
            ? Directory.GetFiles(Path.Combine(cli.Repository, "data"), "*", SearchOption.AllDirectories).Count(f => !Path.GetFileName(f).StartsWith('.'))
            : 0;


    [Fact]
    public async Task KillDuringBackup_LeavesNoSnapshot_AndTheNextRunSendsOnlyWhatWasMissing()
    {
        using var cli = new HavenCli();
        TestData.WriteRandomFiles(cli.Source, 600, 1 << 20, seed: 1); // 600 MiB, incompressible
        cli.Expect(0, "init");

        using (var p = cli.Start("backup", cli.Source, "--read-concurrency", "1"))
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (PackCount(cli) < 4 && !p.HasExited && DateTime.UtcNow < deadline)
            {
                await Task.Delay(5);
            }

            Assert.False(p.HasExited, "the backup finished before it could be killed");
            p.Kill(entireProcessTree: true); // SIGKILL: no cleanup runs
            await p.WaitForExitAsync();
        }

        long arrived = PackBytes(cli);
        Assert.True(arrived >= 3 * (16 << 20), $"only {arrived} bytes had arrived");
        var snapshotDir = Path.Combine(cli.Repository, "snapshots");
        Assert.True(!Directory.Exists(snapshotDir) || Directory.GetFiles(snapshotDir).Length == 0, "a half snapshot is visible");

        // The repository is consistent: the leftovers are only notes.
        cli.Expect(0, "check", "--read-data");

        var second = cli.Expect(0, "backup", cli.Source, "--json").Json;
        long total = 600L << 20;
        long sent = PackBytes(cli) - arrived;
        Assert.True((long)second["recovered_packs"]! >= 3, second.ToJsonString());
        Assert.True(sent <= total - arrived + (20 << 20), $"sent {sent} bytes again although {arrived} of {total} had arrived");

        cli.Expect(0, "check", "--read-data");
        cli.ExpectLatestRestoresAs(cli.Source);
    }

    [Fact]
    public async Task TwoConcurrentBackups_BothSucceed_AndBothRestore()
    {
        using var cli = new HavenCli();
        var a = Path.Combine(cli.Root, "a");
        var b = Path.Combine(cli.Root, "b");
        Directory.CreateDirectory(a);
        Directory.CreateDirectory(b);
        TestData.WriteRandomFiles(a, 60, 1 << 20, seed: 2);
        TestData.WriteRandomFiles(b, 60, 1 << 20, seed: 3);
        File.Copy(Path.Combine(a, "file-0000.bin"), Path.Combine(b, "shared.bin")); // deduplicated between the two
        cli.Expect(0, "init");

        var runs = await Task.WhenAll(cli.RunAsync("backup", a, "--host", "one"), cli.RunAsync("backup", b, "--host", "two"));
        Assert.All(runs, r => Assert.True(r.ExitCode == 0, r.ToString()));
        Assert.Equal(2, cli.Expect(0, "snapshots", "--json").Json.AsArray().Count);
        cli.Expect(0, "check", "--read-data");
        cli.ExpectLatestRestoresAs(a, "one");
        cli.ExpectLatestRestoresAs(b, "two");
    }

    [Fact]
    public async Task TwoConcurrentBackupsAndAPrune_AllSucceed_AndEverySnapshotKeptRestores()
    {
        using var cli = new HavenCli();
        var a = Path.Combine(cli.Root, "a");
        var b = Path.Combine(cli.Root, "b");
        Directory.CreateDirectory(a);
        Directory.CreateDirectory(b);
        TestData.WriteRandomFiles(a, 40, 1 << 20, seed: 5);
        TestData.WriteRandomFiles(b, 40, 1 << 20, seed: 6);
        cli.Expect(0, "init");
        cli.Expect(0, "backup", a, "--host", "one");
        cli.Expect(0, "backup", b, "--host", "two");
        foreach (var f in Directory.GetFiles(a).Take(20).Concat(Directory.GetFiles(b).Take(20)))
        {
            File.Delete(f);
        }

        TestData.WriteRandomFiles(a, 10, 1 << 20, seed: 7);
        // Whichever gets the lock first, the others wait for it (as scheduled jobs would be told to).
        var runs = await Task.WhenAll(
            cli.RunAsync("backup", a, "--host", "one", "--retry-lock", "5m"),
            cli.RunAsync("backup", b, "--host", "two", "--retry-lock", "5m"),
            cli.RunAsync("forget", "--keep-last", "1", "--prune", "--retry-lock", "5m"));
        Assert.All(runs, r => Assert.True(r.ExitCode == 0, r.ToString()));

        // Whatever order the lock gave them, a final prune leaves exactly the newest snapshot per host.
        cli.Expect(0, "forget", "--keep-last", "1", "--prune");
        cli.Expect(0, "check", "--read-data");
        Assert.Equal(2, cli.Expect(0, "snapshots", "--json").Json.AsArray().Count);
        cli.ExpectLatestRestoresAs(a, "one");
        cli.ExpectLatestRestoresAs(b, "two");
    }

    [Fact]
    public async Task KillDuringPrune_LeavesACleanRepository_AndTheNextBackupSendsNothingAgain()
    {
        using var cli = new HavenCli();
        TestData.WriteRandomFiles(cli.Source, 320, 1 << 20, seed: 8);
        cli.Expect(0, "init");
        cli.Expect(0, "backup", cli.Source);
        foreach (var f in Directory.GetFiles(cli.Source).Where((_, i) => i % 2 == 0))
        {
            File.Delete(f);
        }

        cli.Expect(0, "backup", cli.Source);
        cli.Expect(0, "forget", "--keep-last", "1");
        var packsBefore = Directory.GetFiles(Path.Combine(cli.Repository, "data"), "*", SearchOption.AllDirectories).ToHashSet();

        using (var p = cli.Start("prune", "--max-unused", "0%"))
        {
            // Kill it once it has written its first repacked pack, before it can finish.
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (!p.HasExited && DateTime.UtcNow < deadline
                && !Directory.GetFiles(Path.Combine(cli.Repository, "data"), "*", SearchOption.AllDirectories).Any(f => !packsBefore.Contains(f) && !Path.GetFileName(f).StartsWith('.')))
            {
                await Task.Delay(5);
            }

            Assert.False(p.HasExited, "prune finished before it could be killed");
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
        }

        cli.Expect(0, "check", "--read-data");
        var again = cli.Expect(0, "backup", cli.Source, "--json").Json;
        Assert.Equal(0, (long)again["summary"]!["data_blobs"]!);
        cli.Expect(0, "prune", "--max-unused", "0%");
        cli.Expect(0, "check", "--read-data");
        cli.ExpectLatestRestoresAs(cli.Source);
    }

    [Fact]
    public void FullDisk_FailsWithExit15_AndKeepsWhatWasStored()
    {
        if (!Haven.Core.Posix.Posix.IsRoot)
        {
            return; // mounting a small file system needs root; CI runs as root
        }

        using var cli = new HavenCli();
        Directory.CreateDirectory(cli.Repository);
        Assert.Equal(0, Run("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", cli.Repository));
        try
        {
            File.WriteAllText(Path.Combine(cli.Source, "small.txt"), "small but important");
            cli.Expect(0, "init");
            cli.Expect(0, "backup", cli.Source);
            TestData.WriteRandomFiles(cli.Source, 40, 1 << 20, seed: 4);

            var full = cli.Run("backup", cli.Source);
            Assert.True(full.ExitCode == ExitCodes.NoSpace, full.ToString());
            Assert.Contains("full", full.Stderr);
            Assert.DoesNotContain("   at ", full.Stderr);

            Assert.Equal(0, Run("mount", "-o", "remount,size=200m", cli.Repository));
            cli.Expect(0, "check", "--read-data");
            var target = Path.Combine(cli.Root, "out");
            var first = cli.Expect(0, "snapshots", "--json").Json.AsArray().Single()!["id"]!.ToString();
            cli.Expect(0, "restore", first, "--target", target);
            Assert.Equal("small but important", File.ReadAllText(Path.Combine(target + cli.Source, "small.txt")));

            // With room again, the same backup completes.
            cli.Expect(0, "backup", cli.Source);
        }
        finally
        {
            Run("umount", "-l", cli.Repository);
        }
    }

    [Fact]
    public void UnreadableFiles_AreReportedAndCounted_AndTheSnapshotIsSavedWithExit3()
    {
        if (!Haven.Core.Posix.Posix.IsRoot)
        {
            return; // needs to switch to an unprivileged user
        }

        using var cli = new HavenCli();
        File.WriteAllText(Path.Combine(cli.Source, "readable.txt"), "fine");
        File.WriteAllText(Path.Combine(cli.Source, "secret.txt"), "nobody may read this");
        Directory.CreateDirectory(Path.Combine(cli.Source, "closed"));
        File.WriteAllText(Path.Combine(cli.Source, "closed", "inside.txt"), "x");
        File.SetUnixFileMode(Path.Combine(cli.Source, "secret.txt"), UnixFileMode.None);
        File.SetUnixFileMode(Path.Combine(cli.Source, "closed"), UnixFileMode.None);
        foreach (var d in new[] { cli.Root, cli.Source })
        {
            File.SetUnixFileMode(d, (UnixFileMode)0x1FF); // 0777: the unprivileged user writes the repository here
        }

        File.SetUnixFileMode(cli.PasswordFile, (UnixFileMode)0x1A4);
        cli.RunAsUser = 65534;
        cli.Expect(0, "init");
        var r = cli.Run("backup", cli.Source, "--json");
        Assert.True(r.ExitCode == ExitCodes.PartialBackup, r.ToString());
        var json = r.Json;
        Assert.NotNull((string?)json["snapshot_id"]);
        Assert.Equal(2, (long)json["summary"]!["errors"]!);
        var errors = json["warnings"]!.AsArray().Where(w => (bool)w!["error"]!).Select(w => (string)w!["path"]!).ToList();
        Assert.Contains(errors, p => p.EndsWith("secret.txt", StringComparison.Ordinal));
        Assert.Contains(errors, p => p.EndsWith("closed", StringComparison.Ordinal));
        Assert.Contains("readable.txt", cli.Expect(0, "ls", "latest").Stdout);
    }

    private static int Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var p = Process.Start(psi)!;
        p.WaitForExit();
        return p.ExitCode;
    }
}
