using Haven.Core;
using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>The README's first command: a server with a local agent, a first administered backup and restore.</summary>
public sealed class QuickstartTests
{
    [Fact]
    public void Quickstart_StartsAServerAndAnAgent_WhoseReadySignalRunsABackupJob_ThenRestoresItThroughTheServer()
    {
        using var cli = new HavenCli();
        string home = Path.Combine(cli.Root, "quickstart");
        TestData.WriteRandomFiles(cli.Source, 20, 50_000, seed: 11);

        var first = cli.Expect(0, "quickstart", cli.Source, "--home", home, "--once");
        Assert.Contains("started a Haven server at https://127.0.0.1:", first.Stdout);
        Assert.Contains("first administrator: admin", first.Stdout);
        Assert.Contains("(backup, ready): succeeded", first.Stdout);
        Assert.Contains("files 20 new, 0 changed, 0 unchanged", first.Stdout);
        Assert.Contains("(restore, manual): succeeded", first.Stdout);
        Assert.Contains("(20 files, 20 verified)", first.Stdout);
        HavenCli.AssertRestored(cli.Source, Directory.GetDirectories(home, "restore-*").Single());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(home, "admin-token")));

        // A second run finds its server, agent and plan, and backs up only what changed.
        File.WriteAllText(Path.Combine(cli.Source, "added.txt"), "a file added after the first run");
        var second = cli.Expect(0, "quickstart", cli.Source, "--home", home, "--once");
        Assert.DoesNotContain("first administrator", second.Stdout);
        Assert.Contains("files 1 new, 0 changed, 20 unchanged", second.Stdout);
        HavenCli.AssertRestored(cli.Source, Directory.GetDirectories(home, "restore-*").Single());

        // The server stopped with --once; its hosted repository is a folder that holds both snapshots, readable with the
        // generated password.
        string repository = Directory.GetDirectories(Path.Combine(home, "server", "repositories")).Single();
        cli.Environment["HAVEN_PASSWORD_FILE"] = Path.Combine(home, "password");
        var snapshots = cli.Expect(0, "snapshots", "-r", repository, "--json").Json.AsArray();
        Assert.Equal(2, snapshots.Count);
    }

    [Fact]
    public void Quickstart_OfAFolderThatDoesNotExist_SaysSo()
    {
        using var cli = new HavenCli();
        var result = cli.Run("quickstart", Path.Combine(cli.Root, "nowhere"), "--home", Path.Combine(cli.Root, "qs"), "--once");
        Assert.Equal(ExitCodes.SourceNotFound, result.ExitCode);
        Assert.Contains("does not exist", result.Stderr);
        Assert.DoesNotContain("   at ", result.Stderr);
    }
}
