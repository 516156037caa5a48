using Haven.Files.Backup;
using Haven.Files.Restore;
using Haven.Storage;
using Haven.Testing;

namespace Haven.Files.Tests;

/// <summary>A scratch folder with a local repository in it; removed at dispose.</summary>
public sealed class Scratch : IAsyncDisposable
{
    public Scratch()
    {
        Root = Path.Combine(Path.GetTempPath(), "haven-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Root);
        Source = Path.Combine(Root, "src");
        Directory.CreateDirectory(Source);
        Target = Path.Combine(Root, "restore");
        Store = new LocalStore(Path.Combine(Root, "repo"));
    }

    public string Root { get; }

    public string Source { get; }

    public string Target { get; }

    public IStore Store { get; }

    /// <summary>Where the source lands inside the restore target (snapshots keep absolute paths).</summary>
    public string RestoredSource => Target + Source;

    public static async Task<BackupResult> BackupAsync(Haven.Repository.Repository repo, BackupOptions options)
    {
        await repo.LoadIndexAsync(CancellationToken.None);
        return await new Archiver(repo, options).RunAsync(CancellationToken.None);
    }

    public async Task<RestoreResult> RestoreAsync(Haven.Repository.Repository repo, BackupResult backup, RestoreOptions? options = null)
    {
        await repo.LoadIndexAsync(CancellationToken.None);
        return await new Restorer(repo, options ?? new RestoreOptions { Target = Target }).RunAsync(backup.Snapshot.TreeId, CancellationToken.None);
    }

    public ValueTask DisposeAsync()
    {
        TestTree.DeleteTree(Root);
        return ValueTask.CompletedTask;
    }
}
