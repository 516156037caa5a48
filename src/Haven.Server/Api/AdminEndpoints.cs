using Dapper;
using Haven.Protocol;
using Haven.Server.Database;
using Haven.Server.Pki;
using Haven.Server.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Haven.Server.Api;

/// <summary>
/// The administration API. Every endpoint checks the caller's tenant and role (<see cref="AdminPrincipal"/>); what
/// belongs to another tenant answers exactly as what does not exist.
/// </summary>
internal static class AdminEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapGet("/api/v1/health", (CertificateAuthority ca) => ApiResults.Ok(new HealthInfo("ok", ServerInfo.Version, ca.Fingerprint)))
            .Returns<HealthInfo>(ApiDocs.Open, "Liveness, version and the CA fingerprint");
        app.MapGet("/api/v1/ca", (CertificateAuthority ca) => Results.Text(ca.CertificatePem, "application/x-pem-file"))
            .WithTags(ApiDocs.Open).WithSummary("The server CA certificate (PEM); check it against the fingerprint of an enrolment token").Produces<string>(StatusCodes.Status200OK, "application/x-pem-file");
        app.MapPost("/api/v1/auth/token", LoginAsync).Returns<LoginResponse>(ApiDocs.Open, "Log in with name and password; answers a new API token");
        app.MapGet("/api/v1/me", (HttpContext context) => { var a = context.Admin(); return ApiResults.Ok(new AdminIdentity(a.Id, a.Name, a.Role, a.TenantId)); })
            .Returns<AdminIdentity>(ApiDocs.Admin, "The calling administrator");

        app.MapGet("/api/v1/tenants", ListTenantsAsync).Returns<List<TenantInfo>>(ApiDocs.Admin, "Tenants the caller may see (all of them for the provider)");
        app.MapPost("/api/v1/tenants", CreateTenantAsync).Returns<TenantInfo>(ApiDocs.Admin, "Create a tenant (provider only)", StatusCodes.Status201Created);
        app.MapGet("/api/v1/tenants/{tenant}/clients", ListClientsAsync).Returns<List<ClientInfo>>(ApiDocs.Admin, "Enrolled clients of a tenant, with their certificates' state and last contact");
        app.MapPost("/api/v1/tenants/{tenant}/clients/{client}/revoke", RevokeClientAsync).Returns<RevokedClient>(ApiDocs.Admin, "Revoke a client and every certificate it holds");
        app.MapPost("/api/v1/tenants/{tenant}/enrollment-tokens", CreateTokenAsync).Returns<EnrollmentTokenInfo>(ApiDocs.Admin, "Create an enrolment token (one client or several uses)", StatusCodes.Status201Created);
        app.MapGet("/api/v1/tenants/{tenant}/admins", ListAdminsAsync).Returns<List<AdminInfo>>(ApiDocs.Admin, "Administrators of a tenant");
        app.MapPost("/api/v1/admins", CreateAdminAsync).Returns<AdminInfo>(ApiDocs.Admin, "Create an administrator (role admin or viewer of a tenant, or provider)", StatusCodes.Status201Created);
        app.MapGet("/api/v1/auth-failures", ListAuthFailuresAsync).Returns<List<AuthFailureInfo>>(ApiDocs.Admin, "Refused authentications with their path, newest first (provider only)");
        app.MapGet("/api/v1/server/metrics", (HttpContext context, RequestMetrics metrics) =>
                context.Admin().IsProvider ? ApiResults.Ok(metrics.Snapshot()) : ApiResults.Forbidden("only the provider's administrators see the server's metrics"))
            .Returns<ServerMetrics>(ApiDocs.Admin, "Answer times per route (p50, p95, p99, max) and the server's memory (provider only)");
        app.MapDelete("/api/v1/server/metrics", (HttpContext context, RequestMetrics metrics) =>
            {
                if (!context.Admin().IsProvider)
                {
                    return ApiResults.Forbidden("only the provider's administrators reset the server's metrics");
                }

                metrics.Reset();
                return Results.NoContent();
            })
            .ReturnsNothing(ApiDocs.Admin, "Start the answer-time counts afresh (provider only)");
        app.MapGet("/api/v1/audit", ListAuditAsync).Returns<List<AuditEntry>>(ApiDocs.Admin, "The audit log of the tenants the caller may see, newest first");
    }

    private static async Task<IResult> LoginAsync(HttpContext context, LoginRequest request, ManagementDb db, AuthFailures failures, Audit audit, TimeProvider time)
    {
        var row = await db.QuerySingleOrDefaultAsync<LoginRow>(
            "SELECT id AS Id, role AS Role, tenant_id AS TenantId, password_hash AS PasswordHash FROM admins WHERE name = @name", new { name = request.Name ?? "" }, context.RequestAborted).ConfigureAwait(false);
        // The hash is computed for unknown names too, so timing does not tell which names exist.
        bool ok = Secrets.VerifyPassword(request.Password ?? "", row?.PasswordHash ?? DummyHash) && row is not null;
        if (!ok)
        {
            await failures.RecordAsync(context, "password", $"wrong name or password (name '{Truncate(request.Name)}')").ConfigureAwait(false);
            await Authentication.RefuseAsync(context, StatusCodes.Status401Unauthorized, "unauthenticated", "wrong name or password").ConfigureAwait(false);
            return Results.Empty;
        }

        var admin = row!;
        string token = Secrets.NewApiToken();
        await db.ExecuteAsync("INSERT INTO api_tokens (id, admin_id, token_hash, created) VALUES (@id, @adminId, @hash, @now)",
            new { id = Secrets.NewId(), adminId = admin.Id, hash = Secrets.HashToken(token), now = Clock.Format(time.GetUtcNow()) }, context.RequestAborted).ConfigureAwait(false);
        await audit.WriteAsync($"admin:{request.Name}", admin.TenantId, "admin.login", "API token issued", context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(new LoginResponse(token, admin.Id, admin.Role, admin.TenantId));
    }

    private static readonly string DummyHash = Secrets.HashPassword(Secrets.NewPassword());

    private static string Truncate(string? s) => s is null ? "" : s.Length <= 64 ? s : s[..64] + "…";

    private static async Task<IResult> ListTenantsAsync(HttpContext context, ManagementDb db)
    {
        var admin = context.Admin();
        var rows = await db.QueryAsync<TenantRow>(
            admin.IsProvider ? "SELECT id AS Id, name AS Name, created AS Created FROM tenants ORDER BY name" : "SELECT id AS Id, name AS Name, created AS Created FROM tenants WHERE id = @tenant ORDER BY name",
            new { tenant = admin.TenantId }, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(rows.Select(r => new TenantInfo(r.Id, r.Name, Clock.Parse(r.Created))).ToList());
    }

    private static async Task<IResult> CreateTenantAsync(HttpContext context, CreateTenantRequest request, ManagementDb db, Audit audit, TimeProvider time)
    {
        var admin = context.Admin();
        if (!admin.IsProvider)
        {
            return ApiResults.Forbidden("only the provider's administrators create tenants");
        }

        if (!ApiResults.IsValidName(request.Name))
        {
            return ApiResults.BadRequest($"'{request.Name}' is not a valid tenant name", "use 1-64 letters, digits, '.', '_', '-'");
        }

        var tenant = new TenantInfo(Secrets.NewId(), request.Name, time.GetUtcNow());
        try
        {
            await db.ExecuteAsync("INSERT INTO tenants (id, name, created) VALUES (@Id, @Name, @created)", new { tenant.Id, tenant.Name, created = Clock.Format(tenant.Created) }, context.RequestAborted).ConfigureAwait(false);
        }
        catch (System.Data.Common.DbException)
        {
            return ApiResults.Error(StatusCodes.Status409Conflict, "conflict", $"a tenant named {request.Name} exists");
        }

        await audit.WriteAsync($"admin:{admin.Name}", tenant.Id, "tenant.create", $"tenant {tenant.Name} created", context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Created(tenant);
    }

    private static async Task<IResult> ListClientsAsync(HttpContext context, string tenant, ManagementDb db)
    {
        if (!context.Admin().CanRead(tenant))
        {
            return ApiResults.NotFound($"tenant {tenant}");
        }

        var rows = await db.QueryAsync<ClientRow>(
            "SELECT id AS Id, tenant_id AS TenantId, name AS Name, hostname AS Hostname, enrolled AS Enrolled, last_seen AS LastSeen, cert_fingerprint AS CertFingerprint, cert_not_after AS CertNotAfter, revoked AS Revoked FROM clients WHERE tenant_id = @tenant ORDER BY name",
            new { tenant }, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(rows.Select(r => r.ToInfo()).ToList());
    }

    private static async Task<IResult> RevokeClientAsync(HttpContext context, string tenant, string client, ManagementDb db, Audit audit, AgentSessions sessions, TimeProvider time)
    {
        var admin = context.Admin();
        if (!admin.CanRead(tenant))
        {
            return ApiResults.NotFound($"tenant {tenant}");
        }

        if (!admin.CanWrite(tenant))
        {
            return ApiResults.Forbidden("viewers cannot revoke clients");
        }

        string now = Clock.Format(time.GetUtcNow());
        int changed = await db.InTransactionAsync(async (c, tx) =>
        {
            int n = await c.ExecuteAsync("UPDATE clients SET revoked = @now WHERE id = @client AND tenant_id = @tenant AND revoked IS NULL", new { now, client, tenant }, tx).ConfigureAwait(false);
            await c.ExecuteAsync("UPDATE client_certificates SET revoked = @now WHERE client_id = @client AND revoked IS NULL AND EXISTS (SELECT 1 FROM clients WHERE id = @client AND tenant_id = @tenant)", new { now, client, tenant }, tx).ConfigureAwait(false);
            return n;
        }, context.RequestAborted).ConfigureAwait(false);
        sessions.Revoked();
        if (changed == 0)
        {
            return ApiResults.NotFound($"client {client} (or it is revoked already)");
        }

        await audit.WriteAsync($"admin:{admin.Name}", tenant, "client.revoke", $"client {client} revoked", context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(new RevokedClient(client));
    }

    private static async Task<IResult> CreateTokenAsync(HttpContext context, string tenant, CreateEnrollmentTokenRequest request, ManagementDb db, CertificateAuthority ca, Audit audit, TimeProvider time, Repositories.TenantRepositories repositories)
    {
        if (await context.TenantAccessAsync(db, tenant, write: true, "viewers cannot create enrolment tokens").ConfigureAwait(false) is { } refusal)
        {
            return refusal;
        }

        var admin = context.Admin();

        if (request.ClientName is not null && !ApiResults.IsValidName(request.ClientName))
        {
            return ApiResults.BadRequest($"'{request.ClientName}' is not a valid client name", "use 1-64 letters, digits, '.', '_', '-'");
        }

        if (request.RepositoryKeyId is { } keyId)
        {
            // The key file the admin CLI made for this token must be in the tenant's repository (the server cannot open it).
            bool held;
            try
            {
                held = Haven.Storage.StoreLayout.IsValidName(keyId)
                    && await repositories.For(tenant).StatAsync(new Haven.Storage.StoreHandle(Haven.Storage.FileKind.Key, keyId), context.RequestAborted).ConfigureAwait(false) is not null;
            }
            catch (Haven.Storage.StoreException)
            {
                return ApiResults.Error(StatusCodes.Status503ServiceUnavailable, "storage_unavailable", "the server's repository storage failed; try again");
            }

            if (!held)
            {
                return ApiResults.BadRequest($"the tenant's repository has no key file {keyId}", "make the token with 'haven admin token-create --repository-key', which adds the key file first");
            }
        }

        int uses = request.ClientName is not null ? 1 : Math.Clamp(request.Uses ?? 1, 1, 100_000);
        var lifetime = TimeSpan.FromSeconds(Math.Clamp(request.ExpiresInSeconds ?? 7 * 86400, 60, 365L * 86400));
        var token = EnrollmentToken.Create(ca.FingerprintBytes);
        var info = new EnrollmentTokenInfo(Secrets.NewId(), token.ToString(), tenant, request.ClientName, uses, time.GetUtcNow() + lifetime, request.RepositoryKeyId);
        await db.ExecuteAsync(
            "INSERT INTO enrollment_tokens (id, tenant_id, secret_hash, client_name, uses_left, expires, created_by, created, repository_key_id) VALUES (@id, @tenant, @hash, @name, @uses, @expires, @by, @now, @keyId)",
            new { id = info.Id, tenant, hash = token.SecretHash, name = request.ClientName, uses, expires = Clock.Format(info.Expires), by = admin.Id, now = Clock.Format(time.GetUtcNow()), keyId = request.RepositoryKeyId },
            context.RequestAborted).ConfigureAwait(false);
        await audit.WriteAsync($"admin:{admin.Name}", tenant, "token.create", $"enrolment token {info.Id[..8]} for {request.ClientName ?? $"{uses} client(s)"} until {Clock.Format(info.Expires)}", context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Created(info);
    }

    private static async Task<IResult> ListAdminsAsync(HttpContext context, string tenant, ManagementDb db)
    {
        if (!context.Admin().CanRead(tenant))
        {
            return ApiResults.NotFound($"tenant {tenant}");
        }

        var rows = await db.QueryAsync<AdminRow>(
            "SELECT id AS Id, name AS Name, tenant_id AS TenantId, role AS Role, created AS Created FROM admins WHERE tenant_id = @tenant ORDER BY name", new { tenant }, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(rows.Select(r => new AdminInfo(r.Id, r.Name, r.TenantId, r.Role, Clock.Parse(r.Created))).ToList());
    }

    private static async Task<IResult> CreateAdminAsync(HttpContext context, CreateAdminRequest request, ManagementDb db, Audit audit, TimeProvider time)
    {
        var admin = context.Admin();
        if (!Roles.IsKnown(request.Role))
        {
            return ApiResults.BadRequest($"'{request.Role}' is not a role", "roles: provider, admin, viewer");
        }

        if (request.Role == Roles.Provider ? !admin.IsProvider : request.TenantId is null || !admin.CanWrite(request.TenantId))
        {
            return request.TenantId is not null && !admin.CanRead(request.TenantId)
                ? ApiResults.NotFound($"tenant {request.TenantId}")
                : ApiResults.Forbidden("you cannot create administrators with that role or tenant");
        }

        if (!ApiResults.IsValidName(request.Name) || (request.Password?.Length ?? 0) < 12)
        {
            return ApiResults.BadRequest("the name must be 1-64 letters, digits, '.', '_', '-' and the password at least 12 characters");
        }

        var info = new AdminInfo(Secrets.NewId(), request.Name, request.Role == Roles.Provider ? null : request.TenantId, request.Role, time.GetUtcNow());
        try
        {
            await db.ExecuteAsync("INSERT INTO admins (id, name, tenant_id, role, password_hash, created) VALUES (@Id, @Name, @TenantId, @Role, @hash, @created)",
                new { info.Id, info.Name, info.TenantId, info.Role, hash = Secrets.HashPassword(request.Password!), created = Clock.Format(info.Created) }, context.RequestAborted).ConfigureAwait(false);
        }
        catch (System.Data.Common.DbException)
        {
            return ApiResults.Error(StatusCodes.Status409Conflict, "conflict", $"an administrator named {request.Name} exists, or the tenant does not");
        }

        await audit.WriteAsync($"admin:{admin.Name}", info.TenantId, "admin.create", $"administrator {info.Name} ({info.Role}) created", context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Created(info);
    }

    private static async Task<IResult> ListAuthFailuresAsync(HttpContext context, ManagementDb db, int? limit)
    {
        if (!context.Admin().IsProvider)
        {
            return ApiResults.Forbidden("authentication failures are visible to the provider's administrators only (they cannot be told apart by tenant)");
        }

        var rows = await db.QueryAsync<AuthFailureRow>(
            """
            SELECT id AS Id, time AS Time, kind AS Kind, reason AS Reason, remote_address AS RemoteAddress, remote_port AS RemotePort, forwarded_for AS ForwardedFor,
                   cert_fingerprint AS CertFingerprint, cert_subject AS CertSubject, server_name AS ServerName, user_agent AS UserAgent, path AS Path
            FROM auth_failures ORDER BY id DESC LIMIT @limit
            """,
            new { limit = Math.Clamp(limit ?? 100, 1, 10_000) }, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(rows.Select(r => new AuthFailureInfo(r.Id, Clock.Parse(r.Time), r.Kind, r.Reason, r.RemoteAddress, (int)r.RemotePort, r.ForwardedFor, r.CertFingerprint, r.CertSubject, r.ServerName, r.UserAgent, r.Path)).ToList());
    }

    private static async Task<IResult> ListAuditAsync(HttpContext context, ManagementDb db, int? limit)
    {
        var admin = context.Admin();
        const string columns = "id AS Id, time AS Time, actor AS Actor, tenant_id AS TenantId, action AS Action, detail AS Detail";
        var rows = await db.QueryAsync<AuditRow>(
            admin.IsProvider
                ? $"SELECT {columns} FROM audit_log ORDER BY id DESC LIMIT @limit"
                : $"SELECT {columns} FROM audit_log WHERE tenant_id = @tenant ORDER BY id DESC LIMIT @limit",
            new { tenant = admin.TenantId, limit = Math.Clamp(limit ?? 100, 1, 10_000) }, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(rows.Select(r => new AuditEntry(r.Id, Clock.Parse(r.Time), r.Actor, r.TenantId, r.Action, r.Detail)).ToList());
    }

    private sealed record LoginRow(string Id, string Role, string? TenantId, string PasswordHash);

    private sealed record TenantRow(string Id, string Name, string Created);

    private sealed record AdminRow(string Id, string Name, string? TenantId, string Role, string Created);

    private sealed record AuditRow(long Id, string Time, string Actor, string? TenantId, string Action, string Detail);

    private sealed record ClientRow(string Id, string TenantId, string Name, string? Hostname, string Enrolled, string? LastSeen, string CertFingerprint, string CertNotAfter, string? Revoked)
    {
        public ClientInfo ToInfo() => new(Id, TenantId, Name, Hostname, Clock.Parse(Enrolled), Clock.ParseOrNull(LastSeen), CertFingerprint, Clock.Parse(CertNotAfter), Clock.ParseOrNull(Revoked));
    }

    private sealed record AuthFailureRow(long Id, string Time, string Kind, string Reason, string RemoteAddress, long RemotePort, string? ForwardedFor, string? CertFingerprint, string? CertSubject, string? ServerName, string? UserAgent, string Path);
}
