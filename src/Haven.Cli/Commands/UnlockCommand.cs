using System.CommandLine;
using System.Text.Json.Nodes;
using Haven.Cli.Infrastructure;
using Haven.Repository;

namespace Haven.Cli.Commands;

public static class UnlockCommand
{
    public static Command Build()
    {
        var all = new Option<bool>("--remove-all") { Description = "Remove every lock, also those of processes that may still run" };
        var command = new Command("unlock", "Remove stale locks (of processes that are gone or stopped refreshing)") { all };
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            await using var repo = await ctx.OpenRepositoryAsync(loadIndex: false, ct);
            int removed = await RepositoryLock.RemoveAsync(repo, ctx.Parse.GetValue(all), ct);
            ctx.Output.Line($"removed {removed} lock(s)");
            ctx.Output.JsonResult(new JsonObject { ["removed"] = removed });
            return 0;
        });
        return command;
    }
}
