using System.CommandLine;
using Haven.Cli.Infrastructure;
using Haven.Core;

namespace Haven.Cli.Commands;

public static class PruneCommand
{
    public static Command Build()
    {
        var command = new Command("prune", "(not yet available)");
        Runner.SetHandler(command, (ctx, ct) => throw new HavenException(ErrorCode.Failed, "'haven prune' is not available in this build yet"));
        return command;
    }
}
