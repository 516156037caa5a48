using Haven.Protocol;
using Haven.Server.Database;
using Haven.Server.Pki;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;

namespace Haven.Server.Security;

/// <summary>
/// Authenticates every /api/v1 request before it reaches an endpoint:
/// <list type="bullet">
/// <item><c>/api/v1/health</c>, <c>/api/v1/ca</c>, <c>/api/v1/openapi.json</c>, <c>/api/v1/enroll</c>, <c>/api/v1/auth/token</c>: open (the last two check their own
/// secrets and record failures themselves).</item>
/// <item><c>/api/v1/agent/…</c>: a client certificate from this server's CA, not expired, not revoked, belonging to a
/// client that is not revoked.</item>
/// <item>everything else: <c>Authorization: Bearer</c> with an administrator's API token.</item>
/// </list>
/// A refusal is recorded with its path (<see cref="AuthFailures"/>), answered with 401, and the connection is closed.
/// </summary>
public sealed class Authentication(RequestDelegate next, ManagementDb db, CertificateAuthority ca, AuthFailures failures, AgentSessions sessions, TimeProvider time)
{
    public const string AdminKey = "haven.admin";
    public const string AgentKey = "haven.agent";

    private static readonly string[] Open = ["/api/v1/health", "/api/v1/ca", "/api/v1/enroll", "/api/v1/auth/token", Api.ApiDocs.Path];

    public async Task InvokeAsync(HttpContext context)
    {
        string path = context.Request.Path.Value ?? "/";
        if (!path.StartsWith("/api/", StringComparison.Ordinal) || Open.Contains(path, StringComparer.Ordinal))
        {
            if (path is "/api/v1/enroll" or "/api/v1/auth/token" && await failures.IsLimitedAsync(context).ConfigureAwait(false))
            {
                await RefuseLimitedAsync(context).ConfigureAwait(false);
                return;
            }

            await next(context).ConfigureAwait(false);
            return;
        }

        // Certificates and tokens are cheap to check, so they are checked first: a valid caller behind the same address
        // as a misbehaving one is not locked out; only failures count and are limited.
        if (path.StartsWith("/api/v1/agent/", StringComparison.Ordinal))
        {
            var (agent, reason) = await AuthenticateAgentAsync(context).ConfigureAwait(false);
            if (agent is null)
            {
                await RefuseUnauthenticatedAsync(context, "certificate", reason!).ConfigureAwait(false);
                return;
            }

            context.Items[AgentKey] = agent;
        }
        else
        {
            var (admin, reason) = await AuthenticateAdminAsync(context).ConfigureAwait(false);
            if (admin is null)
            {
                await RefuseUnauthenticatedAsync(context, "token", reason!).ConfigureAwait(false);
                return;
            }

            context.Items[AdminKey] = admin;
        }

        await next(context).ConfigureAwait(false);
    }

    private async Task RefuseUnauthenticatedAsync(HttpContext context, string kind, string reason)
    {
        if (await failures.IsLimitedAsync(context).ConfigureAwait(false))
        {
            await RefuseLimitedAsync(context).ConfigureAwait(false);
            return;
        }

        await failures.RecordAsync(context, kind, reason).ConfigureAwait(false);
        await RefuseAsync(context, StatusCodes.Status401Unauthorized, "unauthenticated", reason).ConfigureAwait(false);
    }

    private static Task RefuseLimitedAsync(HttpContext context) =>
        RefuseAsync(context, StatusCodes.Status429TooManyRequests, "rate_limited", "too many failed attempts from this address; wait a minute");

    /// <summary>Answers with an error and closes the connection once the answer is out.</summary>
    public static async Task RefuseAsync(HttpContext context, int status, string error, string message)
    {
        context.Response.StatusCode = status;
        bool http1 = context.Request.Protocol is "HTTP/1.1" or "HTTP/1.0";
        if (http1)
        {
            // Kestrel closes the connection once this response is sent.
            context.Response.Headers.Connection = "close";
        }

        await context.Response.WriteAsJsonAsync(new ApiError(error, message), ProtocolJson.Options).ConfigureAwait(false);
        await context.Response.CompleteAsync().ConfigureAwait(false);
        if (!http1)
        {
            context.Abort(); // HTTP/2 has no Connection header: end the connection itself
        }
    }

    private async Task<(AgentPrincipal?, string?)> AuthenticateAgentAsync(HttpContext context)
    {
        // A TLS connection keeps its client certificate, so a check holds for the connection's next requests until it
        // is a minute old or a revocation happened (see AgentSessions).
        var connection = context.Features.Get<IConnectionItemsFeature>()?.Items;
        if (connection?.TryGetValue(SessionKey, out var cached) == true && cached is AgentSession session && sessions.IsValid(session, time))
        {
            return (session.Agent, null);
        }

        var (agent, reason) = await CheckAgentAsync(context).ConfigureAwait(false);
        if (connection is not null)
        {
            if (agent is null)
            {
                connection.Remove(SessionKey);
            }
            else
            {
                connection[SessionKey] = sessions.Start(agent);
            }
        }

        return (agent, reason);
    }

    private const string SessionKey = "haven.agent.session";

    private async Task<(AgentPrincipal?, string?)> CheckAgentAsync(HttpContext context)
    {
        var cert = await context.Connection.GetClientCertificateAsync().ConfigureAwait(false);
        if (cert is null)
        {
            return (null, "no client certificate");
        }

        if (ca.ValidateClient(cert, time) is { } invalid)
        {
            return (null, invalid);
        }

        string fingerprint = Pinning.Fingerprint(cert);
        var row = await db.QuerySingleOrDefaultAsync<ClientCertRow>(
            """
            SELECT c.id AS ClientId, c.tenant_id AS TenantId, c.name AS Name, k.not_after AS NotAfter, k.revoked AS CertRevoked, c.revoked AS ClientRevoked
            FROM client_certificates k JOIN clients c ON c.id = k.client_id
            WHERE k.fingerprint = @fingerprint
            """,
            new { fingerprint },
            context.RequestAborted).ConfigureAwait(false);
        if (row is null)
        {
            return (null, "certificate unknown to this server");
        }

        if (row.ClientRevoked is not null)
        {
            return (null, $"client {row.Name} was revoked on {row.ClientRevoked}");
        }

        if (row.CertRevoked is not null)
        {
            return (null, $"certificate revoked on {row.CertRevoked}");
        }

        return (new AgentPrincipal(row.ClientId, row.TenantId, row.Name, fingerprint, Clock.Parse(row.NotAfter)), null);
    }

    private async Task<(AdminPrincipal?, string?)> AuthenticateAdminAsync(HttpContext context)
    {
        string header = context.Request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            return (null, header.Length == 0 ? "no API token" : "the Authorization header is not a bearer token");
        }

        string hash = Secrets.HashToken(header["Bearer ".Length..].Trim());
        var admin = await db.QuerySingleOrDefaultAsync<AdminRow>(
            "SELECT a.id AS Id, a.name AS Name, a.role AS Role, a.tenant_id AS TenantId FROM api_tokens t JOIN admins a ON a.id = t.admin_id WHERE t.token_hash = @hash",
            new { hash },
            context.RequestAborted).ConfigureAwait(false);
        return admin is null ? (null, "unknown API token") : (new AdminPrincipal(admin.Id, admin.Name, admin.Role, admin.TenantId), null);
    }

    private sealed record ClientCertRow(string ClientId, string TenantId, string Name, string NotAfter, string? CertRevoked, string? ClientRevoked);

    private sealed record AdminRow(string Id, string Name, string Role, string? TenantId);
}
