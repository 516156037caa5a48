using Haven.Testing;
using Xunit;

namespace Haven.Cli.Tests;

/// <summary>
/// Hosted repositories through the real processes: an administrator creates the tenant's repository
/// (<c>haven init -r haven:https://…/TENANT</c>) and enrolment tokens that carry a repository key; agents back up to
/// <c>haven:agent</c> with that key, never the password, and cannot delete.
/// </summary>
public sealed class HostedRepositoryCliTests
{
    [Fact]
    public void Agents_BackUpWithTheKeyFromTheirToken_AnotherAgentOfTheTenantRestores_AndNeitherCanDelete()
    {
        using var cli = new HavenCli();
        using var server = new RunningServer(cli, database: null);
        string hosted = server.HostedRepository;
        cli.Expect(0, "init", "-r", hosted);
        cli.Expect(2, "admin", "token-create", "--tenant", "default", "--client", "nokey", "--repository-key", "--uses", "x");

        string EnrolWithKey(string name)
        {
            var (token, state) = server.Enrol(cli, name);
            Assert.Equal(4, token.Split('.').Length); // hvn1, secret, CA fingerprint, key secret
            Assert.True(File.Exists(Path.Combine(state, "repository-key.json")));
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(state, "repository-key.json")));
            return state;
        }

        string laptop = EnrolWithKey("laptop");
        string spare = EnrolWithKey("spare");
        TestTree.CreateHardCases(cli.Source, includeLargeFile: false, seed: 5);

        // The agents have no password: the key secret from enrolment opens the repository.
        cli.Environment.Remove("HAVEN_PASSWORD_FILE");
        cli.Environment["HAVEN_REPOSITORY"] = "haven:agent";
        cli.Environment["HAVEN_AGENT_STATE"] = laptop;
        var first = cli.Expect(0, "backup", cli.Source, "--json");
        Assert.Contains("\"snapshot_id\"", first.Stdout);

        cli.Environment["HAVEN_AGENT_STATE"] = spare;
        cli.ExpectLatestRestoresAs(cli.Source);
        var refused = cli.Expect(18, "forget", "latest");
        Assert.Contains("append-only", refused.Stderr);
        Assert.DoesNotContain("   at ", refused.Stderr);

        // The administrator, with the password, sees the same snapshot; a wrong password opens nothing.
        cli.Environment["HAVEN_REPOSITORY"] = hosted;
        cli.Environment["HAVEN_PASSWORD_FILE"] = cli.PasswordFile;
        Assert.Contains(cli.Source, cli.Expect(0, "snapshots").Stdout);
        cli.Environment["HAVEN_PASSWORD"] = "wrong";
        cli.Environment.Remove("HAVEN_PASSWORD_FILE");
        cli.Expect(12, "snapshots");
    }
}
