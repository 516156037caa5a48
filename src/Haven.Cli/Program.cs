using System.CommandLine;
using Haven.Cli.Commands;
using Haven.Cli.Infrastructure;

var root = new RootCommand("""
    haven: encrypted, deduplicated, incremental backups.

    Exit codes (all commands):
      0   success
      1   failed (see the message)
      2   usage error (bad flags or arguments)
      3   backup: snapshot saved, but some files could not be read
      10  no repository at the given location
      11  the repository is locked by another process
      12  wrong password
      13  the repository uses a newer format than this Haven reads
      14  the repository is damaged (check names what)
      15  no space left at the destination
      16  a source path does not exist
      17  the named snapshot, key or object does not exist
      18  access denied by the storage
      19  the storage is unavailable (network, server error)
      20  a repository already exists there (init)
      130 interrupted

    Environment: HAVEN_REPOSITORY, HAVEN_PASSWORD, HAVEN_PASSWORD_FILE, HAVEN_PASSWORD_COMMAND, HAVEN_CACHE_DIR,
    HAVEN_CONFIG; for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION.
    """);
GlobalOptions.AddTo(root);
root.Subcommands.Add(QuickstartCommand.Build());
root.Subcommands.Add(InitCommand.Build());
root.Subcommands.Add(BackupCommand.Build());
root.Subcommands.Add(ImageCommand.Build());
root.Subcommands.Add(SnapshotsCommand.Build());
root.Subcommands.Add(LsCommand.Build());
root.Subcommands.Add(RestoreCommand.Build());
root.Subcommands.Add(CheckCommand.Build());
root.Subcommands.Add(KeyCommand.Build());
root.Subcommands.Add(StatsCommand.Build());
root.Subcommands.Add(CatCommand.Build());
root.Subcommands.Add(UnlockCommand.Build());
root.Subcommands.Add(ForgetCommand.Build());
root.Subcommands.Add(PruneCommand.Build());
root.Subcommands.Add(RepairCommand.Build());
root.Subcommands.Add(CopyCommand.Build());
root.Subcommands.Add(FindCommand.Build());
root.Subcommands.Add(DiffCommand.Build());
root.Subcommands.Add(DumpCommand.Build());
root.Subcommands.Add(ServerCommand.Build());
root.Subcommands.Add(AdminCommand.Build());
root.Subcommands.Add(AgentCommand.Build());

using var allocations = Environment.GetEnvironmentVariable("HAVEN_DEBUG_MEMORY") == "alloc" ? new AllocationListener() : null;
// No response files: arguments such as "@daily" (a schedule) are values, not file names.
var parse = root.Parse(args, new ParserConfiguration { ResponseFileTokenReplacer = null });
if (parse.Errors.Count > 0 && parse.Action is not System.CommandLine.Help.HelpAction)
{
    foreach (var error in parse.Errors)
    {
        Console.Error.WriteLine($"haven: error: {error.Message}");
    }

    Console.Error.WriteLine("hint: see 'haven --help' or 'haven COMMAND --help'");
    return 2;
}

int exitCode = await parse.InvokeAsync();
allocations?.Print(Console.Error);
if (Environment.GetEnvironmentVariable("HAVEN_DEBUG_MEMORY") is "1" or "alloc")
{
    // For memory work: the managed heap at its last GC against the process peak (the rest is native or runtime).
    var info = GC.GetGCMemoryInfo();
    using var self = System.Diagnostics.Process.GetCurrentProcess();
    Console.Error.WriteLine(
        $"memory: peak working set {self.PeakWorkingSet64 >> 20} MiB; managed heap {info.HeapSizeBytes >> 20} MiB "
        + $"(committed {info.TotalCommittedBytes >> 20} MiB, fragmented {info.FragmentedBytes >> 20} MiB, promoted {info.PromotedBytes >> 20} MiB); "
        + $"total allocated {GC.GetTotalAllocatedBytes() >> 20} MiB; collections gen0 {GC.CollectionCount(0)}, gen1 {GC.CollectionCount(1)}, gen2 {GC.CollectionCount(2)}; "
        + "after last GC: " + string.Join(", ", info.GenerationInfo.ToArray().Select((g, i) => $"{(i < 3 ? $"gen{i}" : i == 3 ? "LOH" : "POH")} {g.SizeAfterBytes >> 20} MiB")));
}

return exitCode;
