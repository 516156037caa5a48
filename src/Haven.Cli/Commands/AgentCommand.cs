using System.CommandLine;
using System.Text.Json;
using Haven.Agent;
using Haven.Cli.Infrastructure;
using Haven.Protocol;

namespace Haven.Cli.Commands;

/// <summary><c>haven agent …</c>: the daemon on each client.</summary>
public static class AgentCommand
{
    private static readonly Option<string?> State = new("--state") { Description = "The agent's state folder (env HAVEN_AGENT_STATE; default /var/lib/haven/agent as root, else ~/.local/state/haven/agent)", Recursive = true };

    public static Command Build()
    {
        var command = new Command("agent", """
            The Haven agent: enrols with a server, then runs the jobs the server gives it

            Examples:
              haven agent enroll --server https://backup.example.com:8443/ --token hvn1....
              haven agent run                # the daemon (see docs/server.md for a systemd unit)
              haven agent backup-now         # ask the server to run this client's plans now
              haven agent status
            """) { State };
        command.Subcommands.Add(Enroll());
        command.Subcommands.Add(Run());
        command.Subcommands.Add(BackupNow());
        command.Subcommands.Add(Ready());
        command.Subcommands.Add(Status());
        return command;
    }

    private static AgentState OpenState(CliContext ctx) => new(ctx.Parse.GetValue(State) ?? AgentState.DefaultFolder());

    private static Command Enroll()
    {
        var server = new Option<string>("--server") { Description = "The server's URL, https://HOST:PORT/", Required = true };
        var token = new Option<string?>("--token") { Description = "The enrolment token from the administrator (env HAVEN_ENROLL_TOKEN)" };
        var name = new Option<string?>("--name") { Description = "This client's name, when the token does not fix one (default: the host name)" };
        var c = new Command("enroll", "Enrol this machine with a Haven server, using a token from its administrator") { server, token, name };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            string tokenText = ctx.Parse.GetValue(token) ?? CliContext.Env("HAVEN_ENROLL_TOKEN")
                ?? throw new Haven.Core.HavenException(Haven.Core.ErrorCode.Usage, "no enrolment token given", "pass --token or set HAVEN_ENROLL_TOKEN");
            var state = OpenState(ctx);
            var identity = await AgentClient.EnrollAsync(state, AdminCommand.ParseUrl(ctx.Parse.GetValue(server)!), tokenText, ctx.Parse.GetValue(name), ct);
            ctx.Output.Line($"enrolled as {identity.ClientName} ({identity.ClientId}) with {identity.ServerUrl}; state in {state.Folder}");
            ctx.Output.JsonResult(JsonSerializer.SerializeToNode(identity, ProtocolJson.Options)!);
            return 0;
        });
        return c;
    }

    private static Command Ready()
    {
        var reason = new Option<string?>("--reason") { Description = "Why: start, network or manual (default manual)" };
        var c = new Command("ready", "Send the server a ready signal now (it may start a job at once)") { reason };
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            var answer = await AgentClient.ReadyAsync(OpenState(ctx), ctx.Parse.GetValue(reason) ?? "manual", ct);
            ctx.Output.Line($"server acknowledged {answer.ClientName} ({answer.ClientId}) at {answer.ServerTime:yyyy-MM-dd HH:mm:ss} UTC; certificate valid until {answer.CertificateNotAfter:yyyy-MM-dd}");
            ctx.Output.JsonResult(JsonSerializer.SerializeToNode(answer, ProtocolJson.Options)!);
            return 0;
        });
        return c;
    }

    private static Command Run()
    {
        var c = new Command("run", """
            Run the agent daemon: dial out to the server, say it is ready, wait for jobs on an open poll, run them,
            report progress and results (queued in the state folder while the server cannot be reached). Stops on
            SIGTERM or Ctrl-C; exits 18 when the server refuses this agent (revoked).
            """);
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            var state = OpenState(ctx);
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
            using var term = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, context => { context.Cancel = true; stop.Cancel(); });
            var options = new AgentRunOptions();
            if (CliContext.Env("HAVEN_AGENT_PROGRESS_INTERVAL") is { } interval)
            {
                options = options with { ProgressInterval = Units.ParseDuration(interval, "HAVEN_AGENT_PROGRESS_INTERVAL") };
            }

            if (CliContext.Env("HAVEN_AGENT_RETRY_DELAY") is { } retry)
            {
                options = options with { RetryDelay = Units.ParseDuration(retry, "HAVEN_AGENT_RETRY_DELAY") };
            }

            await new AgentRunner(state, options).RunAsync(stop.Token);
            return 0;
        });
        return c;
    }

    private static Command BackupNow()
    {
        var c = new Command("backup-now", "Ask the server to back this client up now: a ready signal that starts all its plans (the running daemon gets the jobs at once)");
        Runner.SetHandler(c, async (ctx, ct) =>
        {
            var answer = await AgentClient.ReadyAsync(OpenState(ctx), "manual", ct);
            ctx.Output.Line(answer.JobsQueued > 0 ? $"the server queued {answer.JobsQueued} job(s) for {answer.ClientName}" : $"nothing new queued for {answer.ClientName}: its plans are running or waiting already, or it has none");
            ctx.Output.JsonResult(JsonSerializer.SerializeToNode(answer, ProtocolJson.Options)!);
            return 0;
        });
        return c;
    }

    private static Command Status()
    {
        var c = new Command("status", "Show this agent's enrolment");
        Runner.SetHandler(c, (ctx, ct) =>
        {
            var state = OpenState(ctx);
            var identity = state.LoadIdentity();
            using var cert = state.LoadCertificate();
            ctx.Output.Line($"client {identity.ClientName} ({identity.ClientId}), tenant {identity.TenantId}");
            ctx.Output.Line($"server {identity.ServerUrl}, CA {identity.CaFingerprint}");
            ctx.Output.Line($"certificate valid until {cert.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC");
            var json = JsonSerializer.SerializeToNode(identity, ProtocolJson.Options)!.AsObject();
            json["certificate_not_after"] = cert.NotAfter.ToUniversalTime();
            ctx.Output.JsonResult(json);
            return Task.FromResult(0);
        });
        return c;
    }
}
