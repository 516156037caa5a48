using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Server;
using Haven.Server.Jobs;

namespace Haven.Cli.Commands;

public static class ServerCommand
{
    /// <summary>/var/lib/haven/server for root, else ~/.local/share/haven/server; HAVEN_SERVER_DATA overrides.</summary>
    public static string DefaultDataDirectory() =>
        Environment.GetEnvironmentVariable("HAVEN_SERVER_DATA") is { Length: > 0 } env ? env
        : Environment.UserName == "root" ? "/var/lib/haven/server"
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share", "haven", "server");

    public static Command Build()
    {
        var data = new Option<string?>("--data") { Description = "Data folder: database, CA, certificates (env HAVEN_SERVER_DATA; default /var/lib/haven/server as root, else ~/.local/share/haven/server)" };
        var listen = new Option<string?>("--listen") { Description = "Address and port to listen on, e.g. 0.0.0.0:8443 (env HAVEN_SERVER_LISTEN; default 127.0.0.1:8443; port 0 picks a free one)" };
        var database = new Option<string?>("--database") { Description = "PostgreSQL connection string or postgres:// URL (env HAVEN_DATABASE; default SQLite in the data folder)" };
        var repositories = new Option<string?>("--repositories") { Description = "Where the tenants' repositories live: a folder or an s3: URL, one folder or prefix per tenant (env HAVEN_SERVER_REPOSITORIES; default DATA/repositories)" };
        var smtp = new Option<string?>("--smtp") { Description = "SMTP relay for email notifications: smtp://[user:password@]host[:port]?from=address, smtps:// for TLS (env HAVEN_SMTP)" };
        var names = new Option<string[]>("--name") { Description = "Another host name or address agents use to reach this server (for its certificate); repeatable", AllowMultipleArgumentsPerToken = false };
        var command = new Command("server", """
            Run the Haven server: enrols clients, authenticates them by certificate, keeps the management database,
            hosts the tenants' repositories

            Examples:
              haven server
              haven server --listen 0.0.0.0:8443 --name backup.example.com
              haven server --database 'Host=db;Username=haven;Password=...;Database=haven'
              haven server --repositories s3:https://s3.example.com/backups/haven
            """) { data, listen, database, repositories, smtp, names };
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            var p = ctx.Parse;
            var options = new ServerOptions
            {
                DataDirectory = Path.GetFullPath(p.GetValue(data) ?? DefaultDataDirectory()),
                Listen = p.GetValue(listen) ?? Environment.GetEnvironmentVariable("HAVEN_SERVER_LISTEN") ?? "127.0.0.1:8443",
                Database = p.GetValue(database) ?? Environment.GetEnvironmentVariable("HAVEN_DATABASE"),
                Repositories = p.GetValue(repositories) ?? CliContext.Env("HAVEN_SERVER_REPOSITORIES"),
                Smtp = (p.GetValue(smtp) ?? CliContext.Env("HAVEN_SMTP")) is { } smtpUrl ? SmtpOptions.Parse(smtpUrl) : null,
                Jobs = JobTimings(),
                ServerNames = p.GetValue(names) ?? [],
            };

            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => { context.Cancel = true; stop.Cancel(); });
            await using var server = await HavenServer.StartAsync(options, stop.Token);
            Report(ctx, server, options);
            try
            {
                await Task.Delay(Timeout.Infinite, stop.Token);
            }
            catch (OperationCanceledException)
            {
            }

            Console.Error.WriteLine("haven server: stopping");
            return 0;
        });
        return command;
    }

    /// <summary>Scheduler timings from the environment (documented in docs/server.md; tests shorten them).</summary>
    private static JobOptions JobTimings()
    {
        var jobs = new JobOptions();
        TimeSpan? Get(string name) => CliContext.Env(name) is { } v ? Units.ParseDuration(v, name) : null;
        return jobs with
        {
            TickInterval = Get("HAVEN_SCHEDULER_INTERVAL") ?? jobs.TickInterval,
            StaleAfter = Get("HAVEN_JOB_STALE_AFTER") ?? jobs.StaleAfter,
            MissedAfter = Get("HAVEN_MISSED_AFTER") ?? jobs.MissedAfter,
            ReadyMinInterval = Get("HAVEN_READY_MIN_INTERVAL") ?? jobs.ReadyMinInterval,
            MaintenanceInterval = Get("HAVEN_MAINTENANCE_INTERVAL") ?? jobs.MaintenanceInterval,
        };
    }

    private static void Report(CliContext ctx, HavenServer server, ServerOptions options)
    {
        var o = ctx.Output;
        o.Line($"Haven server {ServerInfo.Version} listening on {server.Url}");
        o.Line($"  API:            {server.Url}api/v1");
        o.Line($"  data:           {options.DataDirectory}");
        o.Line($"  database:       {server.Db.Description}");
        o.Line($"  repositories:   {options.Repositories ?? Path.Combine(options.DataDirectory, "repositories")}");
        o.Line($"  CA fingerprint: {server.Ca.Fingerprint}");
        if (server.FirstAdmin is { } first)
        {
            o.Line();
            o.Line("First start: an administrator was created. This is shown once; keep it safe.");
            o.Line($"  name:      {first.Name}");
            o.Line($"  password:  {first.Password}");
            o.Line($"  API token: {first.ApiToken}");
            o.Line();
            o.Line("To administer from this machine:");
            o.Line($"  export HAVEN_SERVER={server.Url} HAVEN_SERVER_CA={server.Ca.Fingerprint} HAVEN_ADMIN_TOKEN={first.ApiToken}");
            o.Line("  haven init -r haven:" + server.Url + "default        # the tenant's repository (choose its password)");
            o.Line("  haven admin token-create --tenant default --client laptop-1 --repository-key");
        }

        o.JsonResult(new JsonObject
        {
            ["url"] = server.Url.ToString(),
            ["ca_fingerprint"] = server.Ca.Fingerprint,
            ["database"] = server.Db.Description,
            ["data"] = options.DataDirectory,
            ["first_admin"] = server.FirstAdmin is { } f ? new JsonObject { ["name"] = f.Name, ["password"] = f.Password, ["api_token"] = f.ApiToken, ["tenant_id"] = f.TenantId } : null,
        });
        Console.Out.Flush();
    }
}
