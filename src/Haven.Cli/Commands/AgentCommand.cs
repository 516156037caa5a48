using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
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
            The Haven agent: enrols with a server and answers to it

            Examples:
              haven agent enroll --server https://backup.example.com:8443/ --token hvn1....
              haven agent ready
              haven agent status
            """) { State };
        command.Subcommands.Add(Enroll());
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
