using System.Net.Http.Json;
using System.Net.Mail;
using System.Text;
using System.Threading.Channels;
using Haven.Protocol;
using Haven.Server.Database;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Jobs;

/// <summary>How the server sends email: an SMTP relay (<c>haven server --smtp smtp://host:port?from=addr</c>).</summary>
public sealed record SmtpOptions(string Host, int Port, string From, bool Ssl = false, string? User = null, string? Password = null)
{
    /// <summary>Parses <c>smtp://[user:password@]host[:port][?from=address]</c>; <c>smtps://</c> for TLS (port 465).</summary>
    public static SmtpOptions Parse(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("smtp" or "smtps") || uri.Host.Length == 0)
        {
            throw new Haven.Core.HavenException(Haven.Core.ErrorCode.Usage, $"'{url}' is not an SMTP URL", "write smtp://host:25?from=haven@example.com (or smtps:// for TLS)");
        }

        string from = "haven@" + Environment.MachineName;
        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var kv = pair.Split('=', 2);
            if (kv.Length == 2 && kv[0] == "from")
            {
                from = Uri.UnescapeDataString(kv[1]);
            }
        }

        string? user = null, password = null;
        if (uri.UserInfo.Length > 0)
        {
            var parts = uri.UserInfo.Split(':', 2);
            user = Uri.UnescapeDataString(parts[0]);
            password = parts.Length > 1 ? Uri.UnescapeDataString(parts[1]) : null;
        }

        bool ssl = uri.Scheme == "smtps";
        return new SmtpOptions(uri.Host, uri.IsDefaultPort || uri.Port <= 0 ? (ssl ? 465 : 25) : uri.Port, from, ssl, user, password);
    }
}

/// <summary>
/// Confirms the end of every job (and every missed schedule) to the tenant's notification targets: webhooks get a
/// JSON POST, email addresses a plain-text mail through the configured SMTP relay. Messages go out from a background
/// queue, so a slow receiver never holds up an agent's report; each is tried three times, then logged as lost.
/// </summary>
public sealed class Notifier(ManagementDb db, SmtpOptions? smtp, ILogger<Notifier> log)
{
    private readonly Channel<(string Event, string JobId)> _queue = Channel.CreateUnbounded<(string, string)>();
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(15) };

    /// <summary>Queues the message about a job's end. Never fails and never waits (the queue is unbounded), so a
    /// caller whose request was cancelled after the job's state was saved still gets its message out.</summary>
    public void JobEnded(string jobId) => _queue.Writer.TryWrite(("job.ended", jobId));

    public void Missed(string jobId) => _queue.Writer.TryWrite(("job.missed", jobId));

    /// <summary>Sends queued messages until <paramref name="ct"/> ends.</summary>
    public async Task RunAsync(CancellationToken ct)
    {
        await foreach (var (kind, jobId) in _queue.Reader.ReadAllAsync(ct).ConfigureAwait(false))
        {
            try
            {
                await SendAsync(kind, jobId, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                log.LogError("notification about job {Job} failed: {Message}", jobId[..8], e.Message);
            }
        }
    }

    private async Task SendAsync(string kind, string jobId, CancellationToken ct)
    {
        var job = await db.QuerySingleOrDefaultAsync<MessageRow>(
            """
            SELECT j.id AS Id, j.tenant_id AS TenantId, j.kind AS Kind, j.trigger AS Trigger, j.state AS State, j.queued AS Queued, j.finished AS Finished,
                   j.snapshot_id AS SnapshotId, j.stats AS Stats, j.message AS Message, c.name AS ClientName, p.name AS PlanName, t.name AS TenantName
            FROM jobs j JOIN clients c ON c.id = j.client_id JOIN tenants t ON t.id = j.tenant_id LEFT JOIN plans p ON p.id = j.plan_id
            WHERE j.id = @jobId
            """, new { jobId }, ct).ConfigureAwait(false);
        if (job is null)
        {
            return;
        }

        var targets = await db.QueryAsync<TargetRow>("SELECT kind AS Kind, address AS Address FROM notification_targets WHERE tenant_id = @tenant", new { tenant = job.TenantId }, ct).ConfigureAwait(false);
        if (targets.Count == 0)
        {
            return;
        }

        string @event = kind == "job.missed" ? "job.missed" : $"job.{job.State}";
        var stats = job.Stats is null ? null : System.Text.Json.JsonSerializer.Deserialize<JobStats>(job.Stats, ProtocolJson.Options);
        string subject = kind == "job.missed"
            ? $"[Haven] {job.ClientName}: missed its scheduled backup{(job.PlanName is { } p ? $" ({p})" : "")}"
            : $"[Haven] {job.ClientName}: {job.Kind} {job.State}{(job.PlanName is { } q ? $" ({q})" : "")}";
        var body = new StringBuilder();
        body.AppendLine(subject["[Haven] ".Length..]);
        body.AppendLine();
        body.AppendLine($"tenant:    {job.TenantName}");
        body.AppendLine($"client:    {job.ClientName}");
        body.AppendLine($"job:       {job.Id} ({job.Kind}, started by {job.Trigger})");
        body.AppendLine($"queued:    {job.Queued}");
        body.AppendLine($"finished:  {job.Finished ?? "-"}");
        if (job.SnapshotId is not null)
        {
            body.AppendLine($"snapshot:  {job.SnapshotId}");
        }

        if (stats is not null)
        {
            body.AppendLine($"files:     {stats.FilesNew} new, {stats.FilesChanged} changed, {stats.FilesUnmodified} unmodified, {stats.FilesRestored} restored");
            body.AppendLine($"bytes:     {stats.BytesProcessed} processed, {stats.BytesAdded} added ({stats.BytesStored} stored)");
            body.AppendLine($"errors:    {stats.Errors}");
            body.AppendLine($"duration:  {stats.DurationSeconds:0.0} s");
        }

        if (job.Message is not null)
        {
            body.AppendLine($"message:   {job.Message}");
        }

        var payload = new
        {
            @event,
            tenant = job.TenantName,
            client = job.ClientName,
            plan = job.PlanName,
            job = new { id = job.Id, kind = job.Kind, trigger = job.Trigger, state = job.State, queued = job.Queued, finished = job.Finished, snapshot_id = job.SnapshotId, stats, message = job.Message },
        };

        foreach (var target in targets)
        {
            for (int attempt = 1; ; attempt++)
            {
                try
                {
                    if (target.Kind == "webhook")
                    {
                        using var response = await _http.PostAsJsonAsync(target.Address, payload, ProtocolJson.Options, ct).ConfigureAwait(false);
                        response.EnsureSuccessStatusCode();
                    }
                    else if (smtp is null)
                    {
                        log.LogWarning("job {Job}: no SMTP relay configured (haven server --smtp), mail to {Address} not sent", job.Id[..8], target.Address);
                    }
                    else
                    {
                        using var client = new SmtpClient(smtp.Host, smtp.Port) { EnableSsl = smtp.Ssl, Timeout = 15_000 };
                        if (smtp.User is not null)
                        {
                            client.Credentials = new System.Net.NetworkCredential(smtp.User, smtp.Password);
                        }

                        using var mail = new MailMessage(smtp.From, target.Address, subject, body.ToString());
                        await client.SendMailAsync(mail, ct).ConfigureAwait(false);
                    }

                    break;
                }
                catch (Exception e) when (e is HttpRequestException or SmtpException or TaskCanceledException or InvalidOperationException && !ct.IsCancellationRequested)
                {
                    if (attempt >= 3)
                    {
                        log.LogError("job {Job}: {Kind} to {Address} failed three times, given up: {Message}", job.Id[..8], target.Kind, target.Address, e.Message);
                        break;
                    }

                    await Task.Delay(TimeSpan.FromSeconds(attempt * 2), ct).ConfigureAwait(false);
                }
            }
        }
    }

    private sealed record MessageRow(
        string Id, string TenantId, string Kind, string Trigger, string State, string Queued, string? Finished,
        string? SnapshotId, string? Stats, string? Message, string ClientName, string? PlanName, string TenantName);

    private sealed record TargetRow(string Kind, string Address);
}
