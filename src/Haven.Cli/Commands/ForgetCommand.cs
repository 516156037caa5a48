using System.CommandLine;
using Haven.Cli.Infrastructure;
using Haven.Core;

namespace Haven.Cli.Commands;

public static class ForgetCommand
{
    public static Command Build()
    {
        var command = new Command("forget", "(not yet available)");
        Runner.SetHandler(command, (ctx, ct) => throw new HavenException(ErrorCode.Failed, "'haven forget' is not available in this build yet"));
        return command;
    }
}
