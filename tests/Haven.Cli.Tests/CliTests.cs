using System.Text.Json.Nodes;
using Haven.Core;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

public class CliTests
{
    [Fact]
    public void InitBackupSnapshotsRestore_WorkAsDocumented()
    {
        using var cli = new HavenCli();
        File.WriteAllText(Path.Combine(cli.Source, "hello.txt"), "hello world");
        Directory.CreateDirectory(Path.Combine(cli.Source, "sub"));
        File.WriteAllText(Path.Combine(cli.Source, "sub", "x.bin"), new string('x', 100_000));

        var init = cli.Expect(0, "init", "--json");
        Assert.Equal(1, (int)init.Json["version"]!);
        var backup = cli.Expect(0, "backup", cli.Source, "--tag", "first,cli", "--json");
        var snapshotId = (string)backup.Json["snapshot_id"]!;
        Assert.Equal(2, (long)backup.Json["summary"]!["files_new"]!);

        var list = cli.Expect(0, "snapshots", "--json").Json.AsArray();
        Assert.Equal(snapshotId, (string)Assert.Single(list)!["id"]!);
        Assert.Equal(["first", "cli"], list[0]!["tags"]!.AsArray().Select(t => (string)t!));

        var ls = cli.Expect(0, "ls", "latest");
        Assert.Contains(cli.Source + "/sub/x.bin", ls.Stdout);

        var target = Path.Combine(cli.Root, "out");
        cli.Expect(0, "restore", snapshotId[..8], "--target", target, "--verify");
        Assert.Equal("hello world", File.ReadAllText(Path.Combine(target + cli.Source, "hello.txt")));

        var sub = Path.Combine(cli.Root, "out-sub");
        cli.Expect(0, "restore", $"latest:{cli.Source}/sub", "--target", sub);
        Assert.Equal(["x.bin"], Directory.GetFileSystemEntries(sub).Select(Path.GetFileName));

        var check = cli.Expect(0, "check", "--read-data", "--json");
        Assert.Equal(0, (int)check.Json["errors"]!);
    }

    [Fact]
    public void WrongPassword_ExitsWith12AndNoStackTrace()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        File.WriteAllText(cli.PasswordFile, "not the password");
        var r = cli.Expect(ExitCodes.WrongPassword, "snapshots");
        Assert.Contains("password", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void CommonMistakes_GetPreciseMessagesAndDocumentedCodes()
    {
        using var cli = new HavenCli();
        var missingRepo = cli.Expect(ExitCodes.RepositoryNotFound, "snapshots");
        Assert.Contains(cli.Repository, missingRepo.Stderr);

        cli.Expect(0, "init");
        cli.Expect(ExitCodes.RepositoryExists, "init");
        var missingSource = cli.Expect(ExitCodes.SourceNotFound, "backup", Path.Combine(cli.Root, "does-not-exist"));
        Assert.Contains("does-not-exist", missingSource.Stderr);
        cli.Expect(ExitCodes.Usage, "backup");
        cli.Expect(ExitCodes.Usage, "backup", cli.Source, "--no-such-flag");
        cli.Expect(ExitCodes.Usage, "backup", cli.Source, "--exclude-larger-than", "lots");
        cli.Expect(ExitCodes.NotFound, "restore", "latest", "--target", Path.Combine(cli.Root, "t"));
        cli.Expect(ExitCodes.Usage, "restore", "xyz!", "--target", Path.Combine(cli.Root, "t"));

        var config = Path.Combine(cli.Repository, "config");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"version\":1", "\"version\":9", StringComparison.Ordinal));
        var newer = cli.Expect(ExitCodes.UnsupportedFormat, "snapshots");
        Assert.Contains("version 9", newer.Stderr);
    }

    [Fact]
    public void Help_ListsExamplesAndExitCodes()
    {
        using var cli = new HavenCli();
        var root = cli.Expect(0, "--help");
        Assert.Contains("130", root.Stdout);
        foreach (var command in new[] { "init", "backup", "restore", "check", "key", "snapshots", "ls" })
        {
            var help = cli.Expect(0, command, "--help");
            Assert.Contains("Usage", help.Stdout);
        }

        Assert.Contains("Examples", cli.Expect(0, "backup", "--help").Stdout);
    }

    [Fact]
    public void Keys_CanBeAddedListedAndRemoved()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        var second = Path.Combine(cli.Root, "second");
        File.WriteAllText(second, "second password");
        var added = (string)cli.Expect(0, "key", "add", "--new-password-file", second, "--json").Json["id"]!;
        Assert.Equal(2, cli.Expect(0, "key", "list", "--json").Json.AsArray().Count);

        cli.Environment["HAVEN_PASSWORD_FILE"] = second;
        cli.Expect(0, "snapshots");
        cli.Expect(ExitCodes.Usage, "key", "remove", added[..8]);

        var first = cli.Expect(0, "key", "list", "--json").Json.AsArray().Single(k => !(bool)k!["current"]!)!["id"]!.ToString();
        cli.Expect(0, "key", "remove", first[..8]);
        cli.Environment["HAVEN_PASSWORD_FILE"] = cli.PasswordFile;
        cli.Expect(ExitCodes.WrongPassword, "snapshots");
    }

    [Fact]
    public void PasswordCommandAndEnvironment_AreHonoured()
    {
        using var cli = new HavenCli();
        cli.Expect(0, "init");
        cli.Environment.Remove("HAVEN_PASSWORD_FILE");
        cli.Environment["HAVEN_PASSWORD_COMMAND"] = $"cat {cli.PasswordFile}";
        cli.Expect(0, "snapshots");
        cli.Environment.Remove("HAVEN_PASSWORD_COMMAND");
        var r = cli.Expect(ExitCodes.Usage, "snapshots");
        Assert.Contains("HAVEN_PASSWORD_FILE", r.Stderr);
    }

    [Fact]
    public void Check_FindsEveryInjectedCorruption_AndNamesTheFile()
    {
        using var cli = new HavenCli();
        TestTree.CreateHardCases(cli.Source, includeLargeFile: false, seed: 5);
        cli.Expect(0, "init");
        cli.Expect(0, "backup", cli.Source);
        File.WriteAllText(Path.Combine(cli.Source, "files", "one"), "changed");
        cli.Expect(0, "backup", cli.Source);
        cli.Expect(0, "check", "--read-data");

        var packs = Directory.GetFiles(Path.Combine(cli.Repository, "data"), "*", SearchOption.AllDirectories).Order().ToArray();
        var indexes = Directory.GetFiles(Path.Combine(cli.Repository, "index")).Order().ToArray();
        var snapshots = Directory.GetFiles(Path.Combine(cli.Repository, "snapshots")).Order().ToArray();

        // A bit flip in a pack, a truncated pack, a bit-flipped index file and a truncated snapshot.
        FlipByte(packs[0], 100);
        Truncate(packs[1], 50);
        FlipByte(indexes[0], 30);
        Truncate(snapshots[0], 10);

        var check = cli.Run("check", "--read-data", "--json");
        Assert.Equal(ExitCodes.Corrupt, check.ExitCode);
        var problems = check.Json["problems"]!.AsArray().Where(p => (bool)p!["error"]!).Select(p => (string)p!["object"]! + " " + (string)p!["message"]!).ToList();
        foreach (var damaged in new[] { packs[0], packs[1], indexes[0], snapshots[0] })
        {
            Assert.Contains(problems, p => p.Contains(Path.GetFileName(damaged), StringComparison.Ordinal));
        }
    }

    [Fact]
    public void MissingPackFile_IsReportedByCheck()
    {
        using var cli = new HavenCli();
        File.WriteAllText(Path.Combine(cli.Source, "a"), "content a");
        cli.Expect(0, "init");
        cli.Expect(0, "backup", cli.Source);
        var pack = Directory.GetFiles(Path.Combine(cli.Repository, "data"), "*", SearchOption.AllDirectories).First();
        File.Delete(pack);
        var r = cli.Expect(ExitCodes.Corrupt, "check");
        Assert.Contains(Path.GetFileName(pack), r.Stderr);
    }

    private static void FlipByte(string path, int offset)
    {
        var b = File.ReadAllBytes(path);
        b[Math.Min(offset, b.Length - 1)] ^= 0x10;
        File.WriteAllBytes(path, b);
    }

    private static void Truncate(string path, int keep)
    {
        var b = File.ReadAllBytes(path);
        File.WriteAllBytes(path, b[..Math.Min(keep, b.Length)]);
    }
}
