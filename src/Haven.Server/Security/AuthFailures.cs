using System.Collections.Concurrent;
using System.Net;
using Haven.Server.Database;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.Logging;

namespace Haven.Server.Security;

/// <summary>
/// Records every refused authentication with the path it came by (remote address and port, forwarded-for chain,
/// client certificate fingerprint and subject, TLS server name, user agent, request path), in the database and the
/// log, and limits how often one remote address may fail: past <see cref="Limit"/> failures in
/// <see cref="Window"/>, its requests are refused before any check, and only the first of those is recorded.
/// </summary>
public sealed partial class AuthFailures(ManagementDb db, TimeProvider time, ILogger<AuthFailures> log)
{
    public const int Limit = 20;

    public static readonly TimeSpan Window = TimeSpan.FromMinutes(1);

    private readonly ConcurrentDictionary<IPAddress, Counter> _counters = new();

    /// <summary>Failures of one address in the current window. Callers lock it.</summary>
    private sealed class Counter
    {
        public long WindowStart;
        public int Count;
        public bool LimitRecorded;

        /// <summary>Starts a new window when the current one is over; true if it did.</summary>
        public bool RestartIfOver(TimeProvider time)
        {
            if (time.GetElapsedTime(WindowStart) <= Window)
            {
                return false;
            }

            WindowStart = time.GetTimestamp();
            Count = 0;
            LimitRecorded = false;
            return true;
        }
    }

    /// <summary>Past this many addresses, counters whose window is over are dropped, so scans from many addresses cannot grow the table without end.</summary>
    private const int SweepAbove = 10_000;

    /// <summary>True when the caller's address has failed too often lately; the caller answers 429 and closes.</summary>
    public async Task<bool> IsLimitedAsync(HttpContext context)
    {
        var address = context.Connection.RemoteIpAddress ?? IPAddress.None;
        if (!_counters.TryGetValue(address, out var counter))
        {
            return false;
        }

        bool recordNow;
        lock (counter)
        {
            if (counter.RestartIfOver(time) || counter.Count < Limit)
            {
                return false;
            }

            recordNow = !counter.LimitRecorded;
            counter.LimitRecorded = true;
        }

        if (recordNow)
        {
            await WriteAsync(context, "rate-limit", $"more than {Limit} failed authentications in {Window.TotalSeconds:0} s; further attempts refused unchecked").ConfigureAwait(false);
        }

        return true;
    }

    /// <summary>Records one failure of <paramref name="kind"/> (certificate, token, password, enrolment).</summary>
    public async Task RecordAsync(HttpContext context, string kind, string reason)
    {
        var address = context.Connection.RemoteIpAddress ?? IPAddress.None;
        if (_counters.Count > SweepAbove)
        {
            foreach (var (key, old) in _counters)
            {
                if (time.GetElapsedTime(old.WindowStart) > Window)
                {
                    _counters.TryRemove(key, out _);
                }
            }
        }

        var counter = _counters.GetOrAdd(address, _ => new Counter { WindowStart = time.GetTimestamp() });
        lock (counter)
        {
            counter.RestartIfOver(time);
            counter.Count++;
        }

        await WriteAsync(context, kind, reason).ConfigureAwait(false);
    }

    private async Task WriteAsync(HttpContext context, string kind, string reason)
    {
        var cert = await context.Connection.GetClientCertificateAsync().ConfigureAwait(false);
        string? forwarded = context.Request.Headers["X-Forwarded-For"].ToString() is { Length: > 0 } xff ? xff : context.Request.Headers["Forwarded"].ToString() is { Length: > 0 } fwd ? fwd : null;
        var row = new
        {
            time = Clock.Format(time.GetUtcNow()),
            kind,
            reason,
            remote_address = context.Connection.RemoteIpAddress?.ToString() ?? "?",
            remote_port = context.Connection.RemotePort,
            forwarded_for = forwarded,
            cert_fingerprint = cert is null ? null : Haven.Protocol.Pinning.Fingerprint(cert),
            cert_subject = cert?.Subject,
            server_name = context.Features.Get<ITlsHandshakeFeature>()?.HostName is { Length: > 0 } sni ? sni : null,
            user_agent = context.Request.Headers.UserAgent.ToString() is { Length: > 0 } ua ? ua : null,
            path = context.Request.Path.Value ?? "/",
        };
        LogFailure(log, kind, reason, row.remote_address, row.remote_port, row.forwarded_for, row.cert_fingerprint, row.server_name, row.user_agent, row.path);
        try
        {
            await db.ExecuteAsync(
                """
                INSERT INTO auth_failures (time, kind, reason, remote_address, remote_port, forwarded_for, cert_fingerprint, cert_subject, server_name, user_agent, path)
                VALUES (@time, @kind, @reason, @remote_address, @remote_port, @forwarded_for, @cert_fingerprint, @cert_subject, @server_name, @user_agent, @path)
                """,
                row,
                CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is Haven.Core.HavenException or System.Data.Common.DbException)
        {
            LogNotStored(log, e.Message);
        }
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Warning, Message = "authentication refused ({Kind}): {Reason}; from {Address}:{Port} forwarded-for={ForwardedFor} cert={Fingerprint} sni={ServerName} ua={UserAgent} path={Path}")]
    private static partial void LogFailure(ILogger logger, string kind, string reason, string address, int port, string? forwardedFor, string? fingerprint, string? serverName, string? userAgent, string path);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Error, Message = "an authentication failure could not be stored: {Message}")]
    private static partial void LogNotStored(ILogger logger, string message);
}
