using System.CommandLine;
using System.Text.Json;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Protocol;

namespace Haven.Cli.Commands;

/// <summary><c>haven admin …</c>: the administration API from the command line.</summary>
public static class AdminCommand
{
    private static readonly Option<string?> ServerUrl = new("--server") { Description = "Server URL (env HAVEN_SERVER; default: the server whose data folder is on this machine)", Recursive = true };
    private static readonly Option<string?> CaFingerprint = new("--ca-fingerprint") { Description = "SHA-256 fingerprint of the server's CA, as 'haven server' printed it (env HAVEN_SERVER_CA)", Recursive = true };
    private static readonly Option<string?> Token = new("--token") { Description = "API token (env HAVEN_ADMIN_TOKEN)", Recursive = true };

    public static Command Build()
    {
        var command = new Command("admin", """
            Administer a Haven server: tenants, clients, enrolment tokens, authentication failures, audit log

            Examples:
              export HAVEN_SERVER=https://backup.example.com:8443/ HAVEN_SERVER_CA=9f2c... HAVEN_ADMIN_TOKEN=hva1....
              haven admin token-create --tenant default --client laptop-1
              haven admin clients --tenant default
              haven admin auth-failures
            """) { ServerUrl, CaFingerprint, Token };

        command.Subcommands.Add(Tenants());
        command.Subcommands.Add(TenantCreate());
        command.Subcommands.Add(TokenCreate());
        command.Subcommands.Add(Clients());
        command.Subcommands.Add(Revoke());
        command.Subcommands.Add(RepositoryInfoCommand());
        command.Subcommands.Add(Maintenance());
        command.Subcommands.Add(Metrics());
        foreach (var sub in AdminJobCommands.All())
        {
            command.Subcommands.Add(sub);
        }

        command.Subcommands.Add(AuthFailures());
        command.Subcommands.Add(AuditLog());
        return command;
    }

    internal static Option<string> TenantOption() => new("--tenant") { Description = "Tenant name or id", Required = true };

    private static Command Tenants()
    {
        var c = new Command("tenants", "List tenants");
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            using var api = await ConnectAsync(ctx, ct);
            var tenants = await api.GetAsync<List<TenantInfo>>("api/v1/tenants", ct);
            Print(ctx, tenants, t => $"{t.Id}  {t.Name}  created {t.Created:yyyy-MM-dd HH:mm}");
            return 0;
        });
        return c;
    }

    private static Command TenantCreate()
    {
        var name = new Argument<string>("name") { Description = "The new tenant's name" };
        var c = new Command("tenant-create", "Create a tenant (provider administrators)") { name };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            using var api = await ConnectAsync(ctx, ct);
            var tenant = await api.PostAsync<TenantInfo>("api/v1/tenants", new CreateTenantRequest(ctx.Parse.GetValue(name)!), ct);
            Print(ctx, [tenant], t => $"created tenant {t.Name} ({t.Id})");
            return 0;
        });
        return c;
    }

    private static Command TokenCreate()
    {
        var tenant = TenantOption();
        var client = new Option<string?>("--client") { Description = "Enrol exactly this client, once (else any client names itself)" };
        var uses = new Option<int?>("--uses") { Description = "How many clients the token may enrol (without --client; default 1)" };
        var expires = new Option<string?>("--expires") { Description = "How long the token is valid, e.g. 1h, 7d (default 7d)" };
        var repositoryKey = new Option<bool>("--repository-key")
        {
            Description = "Give the client the key of the tenant's repository: adds a key file opened by a secret that only the token carries (asks for the repository password; see docs/key-model.md)",
        };
        var c = new Command("token-create", "Create an enrolment token for 'haven agent enroll'") { tenant, client, uses, expires, repositoryKey };
        SetHandler(c, tenant, async (ctx, api, tenantId, ct) =>
        {
            long? seconds = ctx.Parse.GetValue(expires) is { } e ? (long)Units.ParseDuration(e, "--expires").TotalSeconds : null;
            string? keyId = null;
            byte[]? keySecret = null;
            if (ctx.Parse.GetValue(repositoryKey))
            {
                (keyId, keySecret) = await TenantRepository.AddAgentKeyAsync(api, tenantId, ctx.GetPassword(), ct);
            }

            var info = await api.PostAsync<EnrollmentTokenInfo>($"api/v1/tenants/{tenantId}/enrollment-tokens", new CreateEnrollmentTokenRequest(ctx.Parse.GetValue(client), ctx.Parse.GetValue(uses), seconds, keyId), ct);
            if (keySecret is not null)
            {
                info = info with { Token = (EnrollmentToken.Parse(info.Token) with { KeySecret = keySecret }).ToString() };
            }

            if (!ctx.Output.IsJson)
            {
                Console.WriteLine(info.Token);
                ctx.Output.Info($"valid until {info.Expires:yyyy-MM-dd HH:mm} UTC for {(info.ClientName is { } n ? $"client {n}" : $"{info.Uses} client(s)")}; on the client: haven agent enroll --server {api.Server} --token TOKEN");
            }

            ctx.Output.JsonResult(JsonSerializer.SerializeToNode(info, ProtocolJson.Options)!);
            return 0;
        });
        return c;
    }

    private static Command Clients()
    {
        var tenant = TenantOption();
        var c = new Command("clients", "List a tenant's enrolled clients") { tenant };
        SetHandler(c, tenant, async (ctx, api, tenantId, ct) =>
        {
            var clients = await api.GetAsync<List<ClientInfo>>($"api/v1/tenants/{tenantId}/clients", ct);
            Print(ctx, clients, x => $"{x.Id}  {x.Name,-20} {(x.Revoked is { } r ? $"REVOKED {r:yyyy-MM-dd}" : $"last seen {x.LastSeen?.ToString("yyyy-MM-dd HH:mm") ?? "never"}")}  certificate until {x.CertificateNotAfter:yyyy-MM-dd}");
            return 0;
        });
        return c;
    }

    private static Command Revoke()
    {
        var tenant = TenantOption();
        var client = new Argument<string>("client") { Description = "Client name or id" };
        var c = new Command("revoke", "Revoke a client: its certificates stop working at once") { tenant, client };
        SetHandler(c, tenant, async (ctx, api, tenantId, ct) =>
        {
            string wanted = ctx.Parse.GetValue(client)!;
            var clients = await api.GetAsync<List<ClientInfo>>($"api/v1/tenants/{tenantId}/clients", ct);
            var match = clients.FirstOrDefault(x => x.Id == wanted || x.Name == wanted)
                ?? throw new HavenException(ErrorCode.NotFound, $"tenant has no client {wanted}", "list them with 'haven admin clients'");
            await api.PostAsync<JsonElement>($"api/v1/tenants/{tenantId}/clients/{match.Id}/revoke", new { }, ct);
            ctx.Output.Line($"revoked client {match.Name} ({match.Id})");
            ctx.Output.JsonResult(new System.Text.Json.Nodes.JsonObject { ["revoked"] = match.Id });
            return 0;
        });
        return c;
    }

    private static Command RepositoryInfoCommand()
    {
        var tenant = TenantOption();
        var quota = new Option<string?>("--quota") { Description = "Set the tenant's quota (e.g. 500G), or 'none' (provider administrators)" };
        var serverKey = new Option<bool>("--server-key")
        {
            Description = "Give the server a key to the repository so its maintenance can prune by the plans' retention: adds a key file opened by a random secret and hands both to the server (asks for the repository password; see docs/key-model.md)",
        };
        var withdraw = new Option<bool>("--withdraw-server-key") { Description = "Take the server's key back: it forgets the secret and deletes that key file" };
        var c = new Command("repository", "Show a tenant's hosted repository (bytes stored, quota, server key), set its quota, or give or withdraw the server's key") { tenant, quota, serverKey, withdraw };
        SetHandler(c, tenant, async (ctx, api, tenantId, ct) =>
        {
            if (ctx.Parse.GetValue(serverKey) && ctx.Parse.GetValue(withdraw))
            {
                throw new HavenException(ErrorCode.Usage, "--server-key and --withdraw-server-key exclude each other");
            }

            if (ctx.Parse.GetValue(serverKey))
            {
                var (keyId, secret) = await TenantRepository.AddAgentKeyAsync(api, tenantId, ctx.GetPassword(), ct);
                await api.SendAsync<System.Text.Json.JsonElement?>(HttpMethod.Put, $"api/v1/tenants/{tenantId}/repository/server-key", new ServerKeyRequest(keyId, Base64Url.Encode(secret)), ct);
            }
            else if (ctx.Parse.GetValue(withdraw))
            {
                await api.SendAsync<System.Text.Json.JsonElement?>(HttpMethod.Delete, $"api/v1/tenants/{tenantId}/repository/server-key", null, ct);
            }

            RepositoryInfo info = ctx.Parse.GetValue(quota) is { } q
                ? await api.SendAsync<RepositoryInfo>(HttpMethod.Put, $"api/v1/tenants/{tenantId}/quota", new SetQuotaRequest(q == "none" ? null : Units.ParseSize(q, "--quota")), ct)
                : await api.GetAsync<RepositoryInfo>($"api/v1/tenants/{tenantId}/repository", ct);
            Print(ctx, [info], r => $"tenant {r.TenantId}: {(r.Initialized ? "initialised" : "not initialised (haven init -r haven:URL/TENANT)")}, {Units.Bytes(r.UsageBytes)} stored, quota {(r.QuotaBytes is { } b ? Units.Bytes(b) : "none")}, "
                + $"{(r.ServerKey ? "the server holds a key (it prunes)" : "the server holds no key (it forgets, but does not prune)")}, last maintenance {r.LastMaintenance?.ToString("yyyy-MM-dd HH:mm") ?? "never"}");
            return 0;
        });
        return c;
    }

    private static Command Maintenance()
    {
        var tenant = TenantOption();
        var c = new Command("maintenance", """
            Maintain a tenant's hosted repository now, as the server does every hour: forget the snapshots each plan's
            retention drops (from the job records; no key needed), then prune if the server holds a key
            """) { tenant };
        SetHandler(c, tenant, async (ctx, api, tenantId, ct) =>
        {
            var result = await api.PostAsync<MaintenanceResult>($"api/v1/tenants/{tenantId}/maintenance", new { }, ct);
            Print(ctx, [result], r => $"{r.SnapshotsForgotten} snapshot(s) forgotten{(r.SnapshotsRefused > 0 ? $", {r.SnapshotsRefused} left alone (named by a job of a client that did not upload them)" : "")}; "
                + (r.Pruned ? $"pruned: {r.PacksDeleted} pack(s) deleted, {r.PacksRepacked} repacked, {Units.Bytes(r.BytesFreed)} freed" : $"not pruned: {r.PruneSkipped}"));
            return 0;
        });
        return c;
    }

    private static Command Metrics()
    {
        var reset = new Option<bool>("--reset") { Description = "Start the counts afresh" };
        var c = new Command("metrics", "Show the server's answer times per route (p50, p95, p99, max) and its memory (provider administrators)") { reset };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            using var api = await ConnectAsync(ctx, ct);
            if (ctx.Parse.GetValue(reset))
            {
                await api.SendAsync<System.Text.Json.JsonElement?>(HttpMethod.Delete, "api/v1/server/metrics", null, ct);
            }

            var m = await api.GetAsync<ServerMetrics>("api/v1/server/metrics", ct);
            var o = ctx.Output;
            o.Line($"since {m.Since:yyyy-MM-dd HH:mm:ss} UTC: memory {Units.Bytes(m.WorkingSetBytes)} (peak {Units.Bytes(m.PeakWorkingSetBytes)}, managed heap {Units.Bytes(m.GcHeapBytes)}), {m.Threads} threads");
            o.Line($"{"method",-7} {"route",-58} {"count",9} {"5xx",6} {"p50 ms",9} {"p95 ms",9} {"p99 ms",9} {"max ms",9}");
            foreach (var r in m.Routes.Prepend(m.All))
            {
                o.Line($"{r.Method,-7} {r.Route,-58} {r.Count,9} {r.Errors,6} {r.P50Ms,9:0.###} {r.P95Ms,9:0.###} {r.P99Ms,9:0.###} {r.MaxMs,9:0.###}");
            }

            o.JsonResult(System.Text.Json.JsonSerializer.SerializeToNode(m, ProtocolJson.Options)!);
            return 0;
        });
        return c;
    }

    private static Command AuthFailures()
    {
        var limit = new Option<int?>("--limit") { Description = "At most this many, newest first (default 100)" };
        var c = new Command("auth-failures", "List refused authentications with the path each came by") { limit };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            using var api = await ConnectAsync(ctx, ct);
            var rows = await api.GetAsync<List<AuthFailureInfo>>($"api/v1/auth-failures?limit={ctx.Parse.GetValue(limit) ?? 100}", ct);
            Print(ctx, rows, f => $"{f.Time:yyyy-MM-dd HH:mm:ss}  {f.Kind,-11} {f.RemoteAddress}:{f.RemotePort}{(f.ForwardedFor is { } x ? $" via {x}" : "")}  {f.Path}  {f.Reason}"
                + (f.CertificateFingerprint is { } fp ? $"  cert {fp[..16]}…" : "") + (f.UserAgent is { } ua ? $"  ua {ua}" : "") + (f.ServerName is { } sni ? $"  sni {sni}" : ""));
            return 0;
        });
        return c;
    }

    private static Command AuditLog()
    {
        var limit = new Option<int?>("--limit") { Description = "At most this many, newest first (default 100)" };
        var c = new Command("audit", "Show the audit log") { limit };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            using var api = await ConnectAsync(ctx, ct);
            var rows = await api.GetAsync<List<AuditEntry>>($"api/v1/audit?limit={ctx.Parse.GetValue(limit) ?? 100}", ct);
            Print(ctx, rows, a => $"{a.Time:yyyy-MM-dd HH:mm:ss}  {a.Actor,-24} {a.Action,-16} {a.Detail}");
            return 0;
        });
        return c;
    }

    /// <summary>A handler that connects, resolves the tenant option to an id and runs <paramref name="body"/>.</summary>
    internal static void SetHandler(Command command, Option<string> tenant, Func<CliContext, ApiClient, string, CancellationToken, Task<int>> body) =>
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            using var api = await ConnectAsync(ctx, ct);
            string tenantId = await ResolveTenantAsync(api, ctx.Parse.GetValue(tenant)!, ct);
            return await body(ctx, api, tenantId, ct);
        });

    internal static void SetHandler(Command command, Option<string> tenant, Func<CliContext, ApiClient, string, CancellationToken, Task> body) =>
        SetHandler(command, tenant, async (ctx, api, t, ct) =>
        {
            await body(ctx, api, t, ct);
            return 0;
        });

    internal static void Print<T>(CliContext ctx, IReadOnlyList<T> rows, Func<T, string> line)
    {
        foreach (var row in rows)
        {
            ctx.Output.Line(line(row));
        }

        ctx.Output.JsonResult(JsonSerializer.SerializeToNode(rows, ProtocolJson.Options)!);
    }

    private static async Task<string> ResolveTenantAsync(ApiClient api, string nameOrId, CancellationToken ct) =>
        await FindTenantIdAsync(api, nameOrId, ct)
            ?? throw new HavenException(ErrorCode.NotFound, $"no tenant {nameOrId} that you can see", "list them with 'haven admin tenants'");

    /// <summary>The id of the tenant named or numbered <paramref name="nameOrId"/> among those the caller sees, or null.</summary>
    internal static async Task<string?> FindTenantIdAsync(ApiClient api, string nameOrId, CancellationToken ct) =>
        (await api.GetAsync<List<TenantInfo>>("api/v1/tenants", ct)).FirstOrDefault(t => t.Id == nameOrId || t.Name == nameOrId)?.Id;

    /// <summary>Server, CA fingerprint and token from options, the environment, or the local server's data folder.</summary>
    private static async Task<ApiClient> ConnectAsync(CliContext ctx, CancellationToken ct)
    {
        string? url = ctx.Parse.GetValue(ServerUrl) ?? CliContext.Env("HAVEN_SERVER");
        string? fingerprint = ctx.Parse.GetValue(CaFingerprint) ?? CliContext.Env("HAVEN_SERVER_CA");
        if ((url is null || fingerprint is null) && HostedLocation.LocalServer() is { } local
            && (url is null || HostedLocation.SameAuthority(url, local.Url)))
        {
            url ??= local.Url;
            fingerprint ??= local.CaFingerprint;
        }

        if (url is null || fingerprint is null)
        {
            throw new HavenException(ErrorCode.Usage, "no server given", "pass --server URL and --ca-fingerprint F, or set HAVEN_SERVER and HAVEN_SERVER_CA (as 'haven server' printed them)");
        }

        string token = ctx.Parse.GetValue(Token) ?? CliContext.Env("HAVEN_ADMIN_TOKEN")
            ?? throw new HavenException(ErrorCode.Usage, "no API token given", "pass --token or set HAVEN_ADMIN_TOKEN (the first one is printed by the server's first start)");
        return await ApiClient.ConnectAsync(ParseUrl(url), Pinning.ParseFingerprint(fingerprint), bearerToken: token, ct: ct);
    }

    internal static Uri ParseUrl(string url) =>
        Uri.TryCreate(url.EndsWith('/') ? url : url + "/", UriKind.Absolute, out var uri) && uri.Scheme == "https"
            ? uri
            : throw new HavenException(ErrorCode.Usage, $"'{url}' is not an https:// URL", "write the server as https://HOST:PORT/");
}
