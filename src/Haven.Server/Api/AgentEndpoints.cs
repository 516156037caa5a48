using System.Security.Cryptography;
using Dapper;
using Haven.Core;
using Haven.Protocol;
using Haven.Server.Database;
using Haven.Server.Pki;
using Haven.Server.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Haven.Server.Api;

/// <summary>Enrolment (open, token-checked) and the endpoints enrolled agents call with their certificate.</summary>
internal static class AgentEndpoints
{
    public static void Map(IEndpointRouteBuilder app)
    {
        app.MapPost("/api/v1/enroll", EnrollAsync).Returns<EnrollResponse>(ApiDocs.Open, "Enrol with a token and a certificate request; answers the client certificate");
        app.MapPost("/api/v1/agent/ready", ReadyAsync).Returns<ReadyResponse>(ApiDocs.Agent, "Ready signal: queues the client's ready-run plans");
        app.MapPost("/api/v1/agent/renew", RenewAsync).Returns<RenewResponse>(ApiDocs.Agent, "Renew the client certificate before it expires");
    }

    private static async Task<IResult> EnrollAsync(HttpContext context, EnrollRequest request, ManagementDb db, CertificateAuthority ca, AuthFailures failures, Audit audit, TimeProvider time)
    {
        var ct = context.RequestAborted;
        async Task<IResult> Refuse(string reason)
        {
            await failures.RecordAsync(context, "enrolment", reason).ConfigureAwait(false);
            await Authentication.RefuseAsync(context, StatusCodes.Status401Unauthorized, "enrolment_refused", reason).ConfigureAwait(false);
            return Results.Empty;
        }

        if (!EnrollmentToken.TryParse(request.Token, out var token))
        {
            return await Refuse("malformed enrolment token").ConfigureAwait(false);
        }

        if (!CryptographicOperations.FixedTimeEquals(token.CaFingerprint, ca.FingerprintBytes))
        {
            return await Refuse("the enrolment token was made for another server (its CA fingerprint differs)").ConfigureAwait(false);
        }

        var now = time.GetUtcNow();
        string clientId = Secrets.NewId();
        (string? Reason, EnrollResponse? Response, int Status) outcome;
        try
        {
            outcome = await EnrollInTransactionAsync().ConfigureAwait(false);
        }
        catch (HavenException e) when (e.Code == ErrorCode.Usage)
        {
            return ApiResults.BadRequest(e.Message);
        }

        Task<(string? Reason, EnrollResponse? Response, int Status)> EnrollInTransactionAsync() => db.InTransactionAsync<(string? Reason, EnrollResponse? Response, int Status)>(async (c, tx) =>
        {
            var row = await c.QuerySingleOrDefaultAsync<TokenRow>(
                "SELECT id AS Id, tenant_id AS TenantId, client_name AS ClientName, uses_left AS UsesLeft, expires AS Expires, repository_key_id AS RepositoryKeyId FROM enrollment_tokens WHERE secret_hash = @hash",
                new { hash = token.SecretHash }, tx).ConfigureAwait(false);
            if (row is null)
            {
                return ("unknown enrolment token", null, 401);
            }

            if (Clock.Parse(row.Expires) <= now)
            {
                return ($"enrolment token {row.Id[..8]} expired on {row.Expires}", null, 401);
            }

            if (row.UsesLeft <= 0)
            {
                return ($"enrolment token {row.Id[..8]} was already used", null, 401);
            }

            string name = row.ClientName ?? request.ClientName ?? request.Hostname;
            if (!ApiResults.IsValidName(name))
            {
                return ($"'{name}' is not a valid client name (1-64 letters, digits, '.', '_', '-')", null, 400);
            }

            bool taken = await c.ExecuteScalarAsync<long>("SELECT COUNT(*) FROM clients WHERE tenant_id = @tenant AND name = @name", new { tenant = row.TenantId, name }, tx).ConfigureAwait(false) > 0;
            if (taken)
            {
                return ($"a client named {name} is already enrolled in this tenant", null, 409);
            }

            // Conditional, so two enrolments racing for the last use cannot both pass (PostgreSQL reads committed).
            if (await c.ExecuteAsync("UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = @id AND uses_left > 0", new { id = row.Id }, tx).ConfigureAwait(false) != 1)
            {
                return ($"enrolment token {row.Id[..8]} was already used", null, 401);
            }

            using var cert = ca.IssueClientCertificate(request.CsrPem, clientId, row.TenantId, time);
            string fingerprint = Pinning.Fingerprint(cert);
            var notAfter = new DateTimeOffset(cert.NotAfter.ToUniversalTime(), TimeSpan.Zero);
            await c.ExecuteAsync(
                "INSERT INTO clients (id, tenant_id, name, hostname, enrolled, cert_fingerprint, cert_not_after) VALUES (@clientId, @tenant, @name, @hostname, @now, @fingerprint, @notAfter)",
                new { clientId, tenant = row.TenantId, name, hostname = request.Hostname, now = Clock.Format(now), fingerprint, notAfter = Clock.Format(notAfter) }, tx).ConfigureAwait(false);
            await c.ExecuteAsync(
                "INSERT INTO client_certificates (fingerprint, client_id, serial, not_after, issued) VALUES (@fingerprint, @clientId, @serial, @notAfter, @now)",
                new { fingerprint, clientId, serial = cert.SerialNumber, notAfter = Clock.Format(notAfter), now = Clock.Format(now) }, tx).ConfigureAwait(false);
            return (null, new EnrollResponse(clientId, row.TenantId, name, cert.ExportCertificatePem(), ca.CertificatePem, notAfter, row.RepositoryKeyId), 200);
        }, ct);

        if (outcome.Response is null)
        {
            if (outcome.Status == 401)
            {
                return await Refuse(outcome.Reason!).ConfigureAwait(false);
            }

            return ApiResults.Error(outcome.Status, outcome.Status == 409 ? "conflict" : "bad_request", outcome.Reason!);
        }

        await audit.WriteAsync($"client:{clientId}", outcome.Response.TenantId, "client.enrol", $"client {outcome.Response.ClientName} enrolled from {context.Connection.RemoteIpAddress}", ct).ConfigureAwait(false);
        return ApiResults.Ok(outcome.Response);
    }

    private static async Task<IResult> ReadyAsync(HttpContext context, ReadyRequest request, ManagementDb db, TimeProvider time, Jobs.JobService jobs)
    {
        var agent = context.Agent();
        var now = time.GetUtcNow();
        await db.ExecuteAsync("UPDATE clients SET last_seen = @now, hostname = @hostname WHERE id = @id", new { now = Clock.Format(now), hostname = request.Hostname, id = agent.ClientId }, context.RequestAborted).ConfigureAwait(false);
        bool renew = agent.CertificateNotAfter - now < CertificateAuthority.RenewBefore;
        int queued = await jobs.OnReadyAsync(agent, request.Reason, context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(new ReadyResponse(agent.ClientId, agent.Name, agent.TenantId, now, agent.CertificateNotAfter, renew, queued));
    }

    private static async Task<IResult> RenewAsync(HttpContext context, RenewRequest request, ManagementDb db, CertificateAuthority ca, Audit audit, TimeProvider time)
    {
        var agent = context.Agent();
        var now = time.GetUtcNow();
        X509Result issued;
        try
        {
            using var cert = ca.IssueClientCertificate(request.CsrPem, agent.ClientId, agent.TenantId, time);
            issued = new X509Result(Pinning.Fingerprint(cert), cert.SerialNumber, new DateTimeOffset(cert.NotAfter.ToUniversalTime(), TimeSpan.Zero), cert.ExportCertificatePem());
        }
        catch (HavenException e)
        {
            return ApiResults.BadRequest(e.Message);
        }

        await db.InTransactionAsync(async (c, tx) =>
        {
            await c.ExecuteAsync(
                "INSERT INTO client_certificates (fingerprint, client_id, serial, not_after, issued) VALUES (@fingerprint, @clientId, @serial, @notAfter, @now)",
                new { fingerprint = issued.Fingerprint, clientId = agent.ClientId, serial = issued.Serial, notAfter = Clock.Format(issued.NotAfter), now = Clock.Format(now) }, tx).ConfigureAwait(false);
            await c.ExecuteAsync(
                "UPDATE clients SET cert_fingerprint = @fingerprint, cert_not_after = @notAfter WHERE id = @clientId",
                new { fingerprint = issued.Fingerprint, notAfter = Clock.Format(issued.NotAfter), clientId = agent.ClientId }, tx).ConfigureAwait(false);
            return 0;
        }, context.RequestAborted).ConfigureAwait(false);
        await audit.WriteAsync($"client:{agent.ClientId}", agent.TenantId, "client.renew", $"certificate renewed until {Clock.Format(issued.NotAfter)}", context.RequestAborted).ConfigureAwait(false);
        return ApiResults.Ok(new RenewResponse(issued.Pem, issued.NotAfter));
    }

    private sealed record X509Result(string Fingerprint, string Serial, DateTimeOffset NotAfter, string Pem);

    private sealed record TokenRow(string Id, string TenantId, string? ClientName, long UsesLeft, string Expires, string? RepositoryKeyId);
}
