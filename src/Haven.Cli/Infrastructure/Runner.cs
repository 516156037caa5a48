using System.CommandLine;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Storage;

namespace Haven.Cli.Infrastructure;

/// <summary>Runs a command's body and turns every failure into a message and a documented exit code.</summary>
public static class Runner
{
    public static void SetHandler(Command command, Func<CliContext, CancellationToken, Task<int>> body)
    {
        command.SetAction(async (parse, ct) =>
        {
            CliContext? context = null;
            try
            {
                context = new CliContext(parse);
                return await body(context, ct).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                return Report(e, ct);
            }
        });
    }

    /// <summary>
    /// Refuses arguments that look like options: a misspelt flag must not be taken for a path ("./-name" reaches a
    /// file whose name starts with a dash).
    /// </summary>
    public static void RejectOptionLikeValues<T>(Argument<T> argument)
    {
        argument.Validators.Add(result =>
        {
            foreach (var token in result.Tokens)
            {
                if (token.Value.Length > 1 && token.Value[0] == '-')
                {
                    result.AddError($"unknown option '{token.Value}' (for a path that starts with '-', write ./{token.Value})");
                }
            }
        });
    }

    public static int Report(Exception e, CancellationToken ct)
    {
        var (code, message, hint) = Classify(e, ct);
        Console.Error.WriteLine($"haven: error: {message}");
        if (hint is not null)
        {
            Console.Error.WriteLine($"hint: {hint}");
        }

        if (Environment.GetEnvironmentVariable("HAVEN_DEBUG") == "1")
        {
            Console.Error.WriteLine(e.ToString());
        }

        return code;
    }

    private static (int Code, string Message, string? Hint) Classify(Exception e, CancellationToken ct)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } agg)
        {
            e = agg.InnerException!;
        }

        switch (e)
        {
            case HavenException h:
                return (ExitCodes.For(h.Code), h.Message, h.Hint);
            case OperationCanceledException when ct.IsCancellationRequested:
                return (ExitCodes.Interrupted, "interrupted; nothing half-written is visible, and the next run reuses what was stored", null);
            case StoreException s:
                return s.Kind switch
                {
                    StoreErrorKind.NoSpace => (ExitCodes.NoSpace, $"the repository's storage is full: {s.Message}", "free space or move the repository; data already stored is safe"),
                    StoreErrorKind.AccessDenied => (ExitCodes.AccessDenied, $"the repository's storage refused access: {s.Message}", "check credentials and permissions"),
                    StoreErrorKind.NotFound => (ExitCodes.NotFound, s.Message, null),
                    StoreErrorKind.Transient => (ExitCodes.Unavailable, $"the repository's storage is unavailable: {s.Message}", "try again later; data already stored is safe"),
                    _ => (ExitCodes.Failed, $"storage error: {s.Message}", null),
                };
            case PosixException p when p.Errno == Errno.ENOSPC:
                return (ExitCodes.NoSpace, $"no space left: {p.Message}", "free space on the destination and run the command again");
            case PosixException p:
                return (ExitCodes.Failed, p.Message, null);
            case IOException io when io.HResult == 28 || io.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase):
                return (ExitCodes.NoSpace, $"no space left: {io.Message}", "free space on the destination and run the command again");
            case IOException io:
                return (ExitCodes.Failed, io.Message, null);
            case UnauthorizedAccessException ua:
                return (ExitCodes.AccessDenied, ua.Message, null);
            default:
                return (ExitCodes.Failed, $"unexpected failure ({e.GetType().Name}): {e.Message}", "set HAVEN_DEBUG=1 for details and report this");
        }
    }
}
