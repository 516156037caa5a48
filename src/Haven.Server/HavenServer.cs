using System.Net;
using System.Security.Authentication;
using System.Text.Json;
using Haven.Core;
using Haven.Protocol;
using Haven.Server.Api;
using Haven.Server.Database;
using Haven.Server.Jobs;
using Haven.Server.Pki;
using Haven.Server.Repositories;
using Haven.Server.Security;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Haven.Server;

/// <summary>How a server starts.</summary>
public sealed record ServerOptions
{
    /// <summary>The data folder: management database (SQLite), CA, TLS certificate, hosted repositories.</summary>
    public required string DataDirectory { get; init; }

    /// <summary>Address and port to listen on; port 0 picks a free one (see <see cref="HavenServer.Url"/>).</summary>
    public string Listen { get; init; } = "127.0.0.1:8443";

    /// <summary>A PostgreSQL connection string or URL; null for SQLite in the data folder.</summary>
    public string? Database { get; init; }

    /// <summary>
    /// Where the tenants' repositories live: a folder, or an S3 URL (<c>s3:https://host/bucket/prefix</c>, credentials
    /// from the environment as for <c>haven -r s3:…</c>). Null: <c>DATA/repositories</c>.
    /// </summary>
    public string? Repositories { get; init; }

    /// <summary>More names and addresses for the server certificate (what agents dial).</summary>
    public IReadOnlyList<string> ServerNames { get; init; } = [];

    public TimeProvider Time { get; init; } = TimeProvider.System;

    /// <summary>Timings of the scheduler and of job supervision.</summary>
    public JobOptions Jobs { get; init; } = new();

    /// <summary>The SMTP relay for email notifications, or null (webhooks only).</summary>
    public SmtpOptions? Smtp { get; init; }

    public LogLevel LogLevel { get; init; } = LogLevel.Warning;

    /// <summary>The server's own events (jobs handed out, maintenance) are logged from this level.</summary>
    public LogLevel HavenLogLevel { get; init; } = LogLevel.Information;
}

public static class ServerInfo
{
    public static string Version { get; } = typeof(ServerInfo).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";
}

/// <summary>The first administrator, made on the first start; printed once, never stored in clear.</summary>
public sealed record FirstAdmin(string Name, string Password, string ApiToken, string TenantId);

/// <summary>
/// A running Haven server: Kestrel over HTTPS with the server's own CA, client certificates requested on every
/// connection (and checked per request, so a refusal can be recorded with its path), the management database
/// migrated at start.
/// </summary>
public sealed class HavenServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private HavenServer(WebApplication app, Uri url, CertificateAuthority ca, ManagementDb db, FirstAdmin? firstAdmin)
    {
        _app = app;
        Url = url;
        Ca = ca;
        Db = db;
        FirstAdmin = firstAdmin;
    }

    public Uri Url { get; }

    public CertificateAuthority Ca { get; }

    public ManagementDb Db { get; }

    /// <summary>Set on the first start only.</summary>
    public FirstAdmin? FirstAdmin { get; }

    /// <summary>Every route the server answers, with its methods (for checking the OpenAPI document against them).</summary>
    public IReadOnlyList<(string Method, string Route)> Routes() =>
        [.. _app.Services.GetRequiredService<Microsoft.AspNetCore.Routing.EndpointDataSource>().Endpoints
            .OfType<Microsoft.AspNetCore.Routing.RouteEndpoint>()
            .SelectMany(e => (e.Metadata.GetMetadata<Microsoft.AspNetCore.Routing.HttpMethodMetadata>()?.HttpMethods ?? []).Select(m => (m, "/" + e.RoutePattern.RawText!.TrimStart('/'))))];

    /// <summary>The file a running server writes its address and CA fingerprint to, for tools on the same machine.</summary>
    public static string InfoFile(string dataDirectory) => Path.Combine(dataDirectory, "server.json");

    public static async Task<HavenServer> StartAsync(ServerOptions options, CancellationToken ct)
    {
        var endpoint = ParseListen(options.Listen);
        try
        {
            Directory.CreateDirectory(options.DataDirectory);
            Directory.CreateDirectory(Path.Combine(options.DataDirectory, "ca"));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new HavenException(e is UnauthorizedAccessException ? ErrorCode.AccessDenied : ErrorCode.Failed, $"cannot create the server's data folder {options.DataDirectory}: {e.Message}", "choose a writable folder with --data (or HAVEN_SERVER_DATA)", e);
        }

        var time = options.Time;
        var db = ManagementDb.Open(options.Database, Path.Combine(options.DataDirectory, "haven.db"));
        await db.MigrateAsync(ct).ConfigureAwait(false);
        var ca = CertificateAuthority.LoadOrCreate(Path.Combine(options.DataDirectory, "ca"), time);
        var serverCert = ca.IssueServerCertificate(options.ServerNames.Append(endpoint.Address.ToString()), time);
        var firstAdmin = await BootstrapAsync(db, time, ct).ConfigureAwait(false);
        var repositories = new TenantRepositories(options.Repositories ?? Path.Combine(options.DataDirectory, "repositories"), options.DataDirectory);

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { ApplicationName = "haven-server", ContentRootPath = options.DataDirectory });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "yyyy-MM-dd HH:mm:ss "; });
        builder.Logging.SetMinimumLevel(options.LogLevel);
        builder.Logging.AddFilter("Haven", options.HavenLogLevel);
        builder.Services.AddSingleton(time);
        builder.Services.AddSingleton(db);
        builder.Services.AddSingleton(ca);
        builder.Services.AddSingleton<AuthFailures>();
        builder.Services.AddSingleton<AgentSessions>();
        builder.Services.AddSingleton<Audit>();
        builder.Services.AddSingleton<RequestMetrics>();
        builder.Services.AddSingleton(repositories);
        builder.Services.AddSingleton(new ServerKeys(options.DataDirectory));
        builder.Services.AddSingleton<RepositoryMaintenance>();
        builder.Services.AddSingleton(options.Jobs);
        builder.Services.AddSingleton(sp => new Notifier(db, options.Smtp, sp.GetRequiredService<ILogger<Notifier>>()));
        builder.Services.AddSingleton<JobService>();
        builder.Services.AddHostedService<JobBackground>();
        builder.Services.AddHavenOpenApi();
        // A body that does not bind (malformed JSON, wrong types) throws, so the handler below answers it as JSON.
        builder.Services.Configure<Microsoft.AspNetCore.Routing.RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        // Request bodies bind with the protocol's settings (answers are written with ProtocolJson.Options directly).
        builder.Services.ConfigureHttpJsonOptions(o =>
        {
            o.SerializerOptions.PropertyNamingPolicy = ProtocolJson.Options.PropertyNamingPolicy;
            o.SerializerOptions.DefaultIgnoreCondition = ProtocolJson.Options.DefaultIgnoreCondition;
            o.SerializerOptions.Encoder = ProtocolJson.Options.Encoder;
        });
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = 64L * 1024 * 1024;
            kestrel.Listen(endpoint, listen => listen.UseHttps(https =>
            {
                https.ServerCertificate = serverCert;
                https.SslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13;
                https.ClientCertificateMode = ClientCertificateMode.AllowCertificate;
                // Checked per request by Authentication, which records refusals with their path.
                https.AllowAnyClientCertificate();
            }));
        });

        var app = builder.Build();
        var metrics = app.Services.GetRequiredService<RequestMetrics>();
        app.Use(metrics.InvokeAsync);
        app.UseRouting(); // endpoints are matched before authentication, so every answer is counted under its route
        app.UseMiddleware<Authentication>();
        app.Use(async (context, next) =>
        {
            try
            {
                await next(context).ConfigureAwait(false);
            }
            catch (BadHttpRequestException e)
            {
                if (!context.Response.HasStarted)
                {
                    context.Response.StatusCode = e.StatusCode;
                    // Binding names what failed: the JSON body, or a route or query value such as ?limit=abc.
                    string message = e.Message.Contains("request body", StringComparison.Ordinal)
                        ? $"the request body of {context.Request.Method} {context.Request.Path} is missing or is not the JSON it takes"
                        : $"a value in the path or query of {context.Request.Method} {context.Request.Path} has the wrong form";
                    await context.Response.WriteAsJsonAsync(new ApiError("bad_request", message, e.Message), ProtocolJson.Options).ConfigureAwait(false);
                }

                return;
            }

            // Answers that routing made without an endpoint (no such path, wrong method, body that is not JSON).
            if (!context.Response.HasStarted && context.Response.StatusCode is 404 or 405 or 415)
            {
                var (error, message) = context.Response.StatusCode switch
                {
                    404 => ("not_found", $"{context.Request.Method} {context.Request.Path} does not exist"),
                    405 => ("method_not_allowed", $"{context.Request.Path} does not take {context.Request.Method}"),
                    _ => ("unsupported_media_type", "send the request body as JSON (Content-Type: application/json)"),
                };
                await context.Response.WriteAsJsonAsync(new ApiError(error, message), ProtocolJson.Options).ConfigureAwait(false);
            }
        });
        AdminEndpoints.Map(app);
        AgentEndpoints.Map(app);
        RepositoryEndpoints.Map(app);
        JobEndpoints.Map(app);
        app.MapHavenOpenApi();

        try
        {
            await app.StartAsync(ct).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            await app.DisposeAsync().ConfigureAwait(false);
            throw new HavenException(ErrorCode.Unavailable, $"cannot listen on {options.Listen}: {e.Message}", "choose another address with --listen, or stop what uses the port");
        }

        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        var bound = new Uri(address.Replace("://[::]", "://[::1]", StringComparison.Ordinal).Replace("://0.0.0.0", "://127.0.0.1", StringComparison.Ordinal));
        var server = new HavenServer(app, bound, ca, db, firstAdmin);
        await File.WriteAllTextAsync(
            InfoFile(options.DataDirectory),
            JsonSerializer.Serialize(new ServerInfoFile(bound.ToString(), ca.Fingerprint, Environment.ProcessId), ProtocolJson.Options),
            ct).ConfigureAwait(false);
        return server;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().ConfigureAwait(false);
        await _app.Services.GetRequiredService<TenantRepositories>().DisposeAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
        Ca.Dispose();
    }

    private static IPEndPoint ParseListen(string listen)
    {
        if (IPEndPoint.TryParse(listen, out var ep) && listen.Contains(':', StringComparison.Ordinal))
        {
            return ep;
        }

        if (listen.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase) && int.TryParse(listen["localhost:".Length..], out int port) && port is >= 0 and <= 65535)
        {
            return new IPEndPoint(IPAddress.Loopback, port);
        }

        throw new HavenException(ErrorCode.Usage, $"'{listen}' is not an address and port", "write --listen 127.0.0.1:8443, 0.0.0.0:8443 or [::]:8443");
    }

    /// <summary>On an empty database: a tenant "default" and a provider administrator "admin" with a random password and token.</summary>
    private static async Task<FirstAdmin?> BootstrapAsync(ManagementDb db, TimeProvider time, CancellationToken ct)
    {
        return await db.InTransactionAsync(async (c, tx) =>
        {
            long admins = await Dapper.SqlMapper.ExecuteScalarAsync<long>(c, "SELECT COUNT(*) FROM admins", transaction: tx).ConfigureAwait(false);
            if (admins > 0)
            {
                return null;
            }

            string now = Clock.Format(time.GetUtcNow());
            string tenantId = Secrets.NewId();
            string adminId = Secrets.NewId();
            string password = Secrets.NewPassword();
            string token = Secrets.NewApiToken();
            await Dapper.SqlMapper.ExecuteAsync(c, "INSERT INTO tenants (id, name, created) VALUES (@tenantId, 'default', @now)", new { tenantId, now }, tx).ConfigureAwait(false);
            await Dapper.SqlMapper.ExecuteAsync(c, "INSERT INTO admins (id, name, tenant_id, role, password_hash, created) VALUES (@adminId, 'admin', NULL, @role, @hash, @now)", new { adminId, role = Roles.Provider, hash = Secrets.HashPassword(password), now }, tx).ConfigureAwait(false);
            await Dapper.SqlMapper.ExecuteAsync(c, "INSERT INTO api_tokens (id, admin_id, token_hash, created) VALUES (@id, @adminId, @hash, @now)", new { id = Secrets.NewId(), adminId, hash = Secrets.HashToken(token), now }, tx).ConfigureAwait(false);
            await Dapper.SqlMapper.ExecuteAsync(c, "INSERT INTO audit_log (time, actor, tenant_id, action, detail) VALUES (@now, 'server', NULL, 'admin.bootstrap', 'first administrator admin and tenant default created')", new { now }, tx).ConfigureAwait(false);
            return new FirstAdmin("admin", password, token, tenantId);
        }, ct).ConfigureAwait(false);
    }
}

/// <summary>Contents of <see cref="HavenServer.InfoFile"/>.</summary>
public sealed record ServerInfoFile(string Url, string CaFingerprint, int Pid);
