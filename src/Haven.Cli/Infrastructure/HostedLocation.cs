using System.Text.Json;
using Haven.Agent;
using Haven.Core;
using Haven.Protocol;
using Haven.Server;
using Haven.Storage;

namespace Haven.Cli.Infrastructure;

/// <summary>
/// Repository locations on a Haven server:
/// <list type="bullet">
/// <item><c>haven:agent</c>: the repository of this machine's agent's tenant, reached with the agent's certificate
/// (state folder from HAVEN_AGENT_STATE or the default); append-only. The password defaults to the key secret the
/// agent received at enrolment.</item>
/// <item><c>haven:https://HOST:PORT/TENANT</c>: a tenant's repository (name or id), reached as an administrator with
/// HAVEN_ADMIN_TOKEN, the server pinned by HAVEN_SERVER_CA (or by the local server's data folder).</item>
/// </list>
/// </summary>
public static class HostedLocation
{
    public const string Scheme = "haven:";

    public const string Agent = "haven:agent";

    public static bool Is(string location) => location.StartsWith(Scheme, StringComparison.Ordinal);

    public static IStore Open(string location)
    {
        if (location == Agent)
        {
            var state = new AgentState(AgentState.DefaultFolder());
            if (!state.IsEnrolled)
            {
                throw new HavenException(ErrorCode.RepositoryNotFound, $"this machine's agent is not enrolled (no state in {state.Folder})", "enrol it with 'haven agent enroll', or set HAVEN_AGENT_STATE");
            }

            return AgentClient.OpenRepositoryStore(state);
        }

        string rest = location[Scheme.Length..];
        if (!Uri.TryCreate(rest, UriKind.Absolute, out var url) || url.Scheme != "https" || url.AbsolutePath.Trim('/') is not { Length: > 0 } tenant || tenant.Contains('/', StringComparison.Ordinal))
        {
            throw new HavenException(ErrorCode.Usage, $"'{location}' is not a hosted repository location", "write haven:agent on an enrolled client, or haven:https://HOST:PORT/TENANT as an administrator");
        }

        var server = new Uri($"https://{url.Authority}/");
        string token = CliContext.Env("HAVEN_ADMIN_TOKEN")
            ?? throw new HavenException(ErrorCode.Usage, $"{location} needs an administrator's API token", "set HAVEN_ADMIN_TOKEN");
        string fingerprint = CliContext.Env("HAVEN_SERVER_CA") ?? (LocalServer() is { } local && SameAuthority(server.ToString(), local.Url) ? local.CaFingerprint : null)
            ?? throw new HavenException(ErrorCode.Usage, $"{location} needs the server's CA fingerprint", "set HAVEN_SERVER_CA (as 'haven server' printed it)");
        byte[] pin = Pinning.ParseFingerprint(fingerprint);
        return new HttpStore($"{Scheme}{server}{tenant}", async ct =>
        {
            var api = await ApiClient.ConnectAsync(server, pin, bearerToken: token, ct: ct).ConfigureAwait(false);
            try
            {
                string id = await Commands.AdminCommand.FindTenantIdAsync(api, tenant, ct).ConfigureAwait(false)
                    ?? throw new HavenException(ErrorCode.RepositoryNotFound, $"the server has no tenant {tenant} that this token can see", "list them with 'haven admin tenants'");
                return (api, HttpStore.TenantBasePath(id));
            }
            catch
            {
                api.Dispose();
                throw;
            }
        });
    }

    /// <summary>The password for <c>haven:agent</c> when none was given: the key secret from enrolment.</summary>
    public static string? AgentKeySecret() => new AgentState(AgentState.DefaultFolder()).LoadRepositoryKey()?.Secret;

    /// <summary>The server running on this machine, as its data folder's <c>server.json</c> names it; null when absent or unreadable.</summary>
    public static ServerInfoFile? LocalServer()
    {
        string info = HavenServer.InfoFile(Commands.ServerCommand.DefaultDataDirectory());
        try
        {
            return File.Exists(info) ? JsonSerializer.Deserialize<ServerInfoFile>(File.ReadAllText(info), ProtocolJson.Options) : null;
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>True when two URLs name the same host and port (the local server's fingerprint fits only its own URL).</summary>
    public static bool SameAuthority(string a, string b) =>
        Uri.TryCreate(a, UriKind.Absolute, out var x) && Uri.TryCreate(b, UriKind.Absolute, out var y) && x.Authority == y.Authority;
}
