using System.CommandLine;
using System.Security.Cryptography;
using Haven.Cli.Infrastructure;
using Haven.Core;
using Haven.Files.Backup;
using Haven.Files.Filters;
using Haven.Files.Restore;
using Haven.Repository;
using Haven.Storage;

namespace Haven.Cli.Commands;

/// <summary>
/// A first run with no setup: creates a local repository with a generated password, backs up a folder, lists the
/// snapshots, restores the newest into a scratch folder and compares it, then prints the commands to go on.
/// </summary>
public static class QuickstartCommand
{
    public static Command Build()
    {
        var source = new Argument<string?>("source") { Description = "Folder to back up (default: the current folder)", Arity = ArgumentArity.ZeroOrOne };
        var home = new Option<string?>("--home") { Description = "Where the quickstart repository lives (default ~/.local/share/haven/quickstart, env HAVEN_QUICKSTART_HOME)" };
        var command = new Command("quickstart", "Try Haven: back up a folder into a local repository and restore it, with no setup") { source, home };
        Runner.SetHandler(command, async (ctx, ct) =>
        {
            string dir = ctx.Parse.GetValue(home) ?? Environment.GetEnvironmentVariable("HAVEN_QUICKSTART_HOME")
                ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share", "haven", "quickstart");
            dir = Path.GetFullPath(dir);
            string repoDir = Path.Combine(dir, "repository");
            string passwordFile = Path.Combine(dir, "password");
            string src = Path.GetFullPath(ctx.Parse.GetValue(source) ?? Environment.CurrentDirectory);
            if (!Directory.Exists(src))
            {
                throw new HavenException(ErrorCode.SourceNotFound, $"the folder {src} does not exist");
            }

            Directory.CreateDirectory(dir);
            if (!File.Exists(passwordFile))
            {
                File.WriteAllText(passwordFile, Convert.ToBase64String(RandomNumberGenerator.GetBytes(24)));
                File.SetUnixFileMode(passwordFile, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            }

            string password = CliContext.ReadPasswordFile(passwordFile);
            var store = new RetryingStore(new LocalStore(repoDir), new RetryOptions());
            Haven.Repository.Repository repo;
            if (await store.StatAsync(StoreHandle.Config, ct) is null)
            {
                repo = await Haven.Repository.Repository.InitAsync(store, password, new RepositoryInitOptions(), null, ct);
                Console.Out.WriteLine($"1. created a repository at {repoDir}");
                Console.Out.WriteLine($"   (its password was generated into {passwordFile})");
            }
            else
            {
                repo = await Haven.Repository.Repository.OpenAsync(store, password, null, ct);
                Console.Out.WriteLine($"1. using the repository at {repoDir}");
            }

            await using (repo)
            {
                await repo.LoadIndexAsync(ct);
                var excludes = new PatternSet();
                if (dir.StartsWith(src + "/", StringComparison.Ordinal))
                {
                    excludes.Add(dir, false);
                }

                Console.Out.WriteLine($"2. backing up {src}");
                BackupResult backup;
                await using (await RepositoryLock.AcquireAsync(repo, false, "quickstart backup", TimeSpan.FromSeconds(30), ct))
                {
                    var archiver = new Archiver(repo, new BackupOptions { Paths = [src], Excludes = excludes, ExcludeCaches = true });
                    backup = await ctx.Output.WithProgressAsync(archiver.RunAsync(ct), () => $"   {Units.Count(archiver.Progress.FilesDone)} files, {Units.Bytes(archiver.Progress.BytesDone)}");
                }

                var s = backup.Snapshot.Summary!;
                Console.Out.WriteLine($"   snapshot {backup.SnapshotId?.Short}: {Units.Count(s.TotalFilesProcessed)} files, {Units.Bytes(s.TotalBytesProcessed)}; "
                    + $"{Units.Count(s.FilesNew)} new, {Units.Count(s.FilesChanged)} changed, {Units.Count(s.FilesUnmodified)} unchanged; added {Units.Bytes(s.DataAddedStored)} to the repository");

                var snapshots = await repo.LoadSnapshotsAsync(ct);
                Console.Out.WriteLine($"3. the repository holds {snapshots.Count} snapshot(s):");
                foreach (var (id, snap) in snapshots.TakeLast(5))
                {
                    Console.Out.WriteLine($"   {id.Short}  {snap.Time.ToLocalTime():yyyy-MM-dd HH:mm:ss}  {snap.Hostname}  {string.Join(" ", snap.Paths)}");
                }

                foreach (var old in Directory.GetDirectories(dir, "restore-*"))
                {
                    Haven.Core.Posix.PosixTree.Delete(old);
                }

                string target = Path.Combine(dir, "restore-" + DateTime.Now.ToString("yyyyMMdd-HHmmss"));
                Console.Out.WriteLine($"4. restoring snapshot {backup.SnapshotId?.Short} into {target} and verifying it");
                var restorer = new Restorer(repo, new RestoreOptions { Target = target, Verify = true });
                var restored = await restorer.RunAsync(backup.Snapshot.TreeId, ct);
                Console.Out.WriteLine($"   restored {Units.Count(restored.Files)} files ({Units.Bytes(restored.Bytes)}), {Units.Count(restored.Verified)} verified byte for byte"
                    + (restored.Errors.Count > 0 ? $", {restored.Errors.Count} errors" : ""));
                foreach (var e in restored.Errors.Take(10))
                {
                    Console.Error.WriteLine("   error: " + e);
                }

                Console.Out.WriteLine();
                Console.Out.WriteLine("Go on with:");
                if (Environment.ProcessPath is { } exe && Path.GetFileName(exe) == "haven")
                {
                    Console.Out.WriteLine($"   alias haven={exe}");
                }

                Console.Out.WriteLine($"   export HAVEN_REPOSITORY={repoDir} HAVEN_PASSWORD_FILE={passwordFile}");
                Console.Out.WriteLine("   haven snapshots | haven ls latest | haven backup FOLDER | haven restore latest --target DIR | haven check --read-data");
                return restored.Errors.Count == 0 && backup.ErrorCount == 0 ? ExitCodes.Success : ExitCodes.PartialBackup;
            }
        });
        return command;
    }
}
