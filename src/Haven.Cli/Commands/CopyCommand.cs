using System.CommandLine;
using Haven.Cli.Infrastructure;
using Haven.Core;

namespace Haven.Cli.Commands;

public static class CopyCommand
{
    public static Command Build()
    {
        var command = new Command("copy", "(not yet available)");
        Runner.SetHandler(command, (ctx, ct) => throw new HavenException(ErrorCode.Failed, "'haven copy' is not available in this build yet"));
        return command;
    }
}
