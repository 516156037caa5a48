using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Model;
using Haven.Testing;
using Xunit;

namespace Haven.Repository.Tests;

public class CacheTests : IDisposable
{
    private readonly string _cacheRoot = Path.Combine(Path.GetTempPath(), "haven-cache-" + Guid.NewGuid().ToString("N")[..8]);

    public void Dispose() => PosixTree.Delete(_cacheRoot);

    [Fact]
    public async Task ASecondProcess_ReadsIndexSnapshotsAndTreesFromTheCache()
    {
        var memory = new MemoryStore();
        var faulty = new FaultyStore(memory);
        var repo = await TestRepository.CreateAsync(faulty);
        repo.UseCache(_cacheRoot);
        var writer = new BlobWriter(repo);
        var tree = TreeCodec.Encode([new Node { Name = "f"u8.ToArray(), Type = FileType.Regular }]);
        var treeId = repo.Key.BlobId(tree);
        await writer.SaveAsync(BlobType.Tree, treeId, tree, CancellationToken.None);
        await writer.FlushAsync(CancellationToken.None);
        await repo.SaveSnapshotAsync(new Snapshot { Tree = treeId.ToString(), Paths = ["/"] }, CancellationToken.None);

        faulty.ResetCounts();
        var again = await Repository.OpenAsync(faulty, TestRepository.Password);
        again.UseCache(_cacheRoot);
        await again.LoadIndexAsync(CancellationToken.None);
        var snapshots = await again.LoadSnapshotsAsync(CancellationToken.None);
        var nodes = await again.LoadTreeAsync(snapshots.Single().Snapshot.TreeId, CancellationToken.None);
        Assert.Equal("f"u8.ToArray(), nodes.Single().Name);
        // Only config and the key file come from the store; index, snapshot and tree pack come from the cache.
        Assert.Equal(2, faulty.CallCount(StoreOperation.Get));
        Assert.Equal(0, faulty.CallCount(StoreOperation.ReadRange));
    }

    [Fact]
    public async Task ADamagedCacheEntry_IsFetchedAgain()
    {
        var memory = new MemoryStore();
        var repo = await TestRepository.CreateAsync(memory);
        repo.UseCache(_cacheRoot);
        var id = await repo.SaveSnapshotAsync(new Snapshot { Tree = new string('1', 64), Paths = ["/x"] }, CancellationToken.None);
        var cached = Path.Combine(_cacheRoot, repo.Config.Id, "snapshots", id.ToString());
        Assert.True(File.Exists(cached));
        File.WriteAllText(cached, "garbage");
        var loaded = await repo.LoadSnapshotAsync(id, CancellationToken.None);
        Assert.Equal(["/x"], loaded.Paths);
    }
}
