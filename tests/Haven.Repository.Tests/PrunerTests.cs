using System.Buffers;
using System.Runtime.CompilerServices;
using System.Text;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Index;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;
using Haven.Testing;
using Xunit;

namespace Haven.Repository.Tests;

/// <summary>
/// A repository in memory with snapshots made of named files: each snapshot's root tree holds a directory "dir" whose
/// files are cut into 4 KiB data blobs. Each <see cref="BackupAsync"/> writes through its own <see cref="BlobWriter"/>,
/// so it leaves one data pack, one tree pack and one index file (fewer when everything is already stored).
/// </summary>
internal sealed class PruneFixture
{
    public const int ChunkSize = 4096;

    private PruneFixture(MemoryStore store, Repository repo)
    {
        Store = store;
        Repo = repo;
    }

    public MemoryStore Store { get; }

    public Repository Repo { get; }

    private static CancellationToken Ct => CancellationToken.None;

    public static async Task<PruneFixture> CreateAsync(MemoryStore? store = null)
    {
        store ??= new MemoryStore();
        return new PruneFixture(store, await TestRepository.CreateAsync(store));
    }

    public static byte[] RandomBytes(int seed, int length)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    public Task<ObjectId> BackupAsync(params (string Name, byte[] Content)[] files) => BackupAsync(Repo, files);

    public static async Task<ObjectId> BackupAsync(Repository repo, params (string Name, byte[] Content)[] files)
    {
        var writer = new BlobWriter(repo);
        var nodes = new List<Node>();
        foreach (var (name, content) in files.OrderBy(f => f.Name, StringComparer.Ordinal))
        {
            var ids = new List<ObjectId>();
            for (int offset = 0; offset < content.Length; offset += ChunkSize)
            {
                var chunk = content.AsMemory(offset, Math.Min(ChunkSize, content.Length - offset));
                var id = repo.Key.BlobId(chunk.Span);
                await writer.SaveAsync(BlobType.Data, id, chunk, Ct);
                ids.Add(id);
            }

            nodes.Add(new Node { Name = Encoding.UTF8.GetBytes(name), Type = FileType.Regular, Mode = 0x1a4, Size = content.Length, Content = ids });
        }

        var dir = await SaveTreeAsync(repo, writer, nodes);
        var root = await SaveTreeAsync(repo, writer, [new Node { Name = "dir"u8.ToArray(), Type = FileType.Directory, Mode = 0x1ed, Subtree = dir }]);
        await writer.FlushAsync(Ct);
        await writer.DisposeAsync();
        return await repo.SaveSnapshotAsync(new Snapshot { Tree = root.ToString(), Paths = ["/dir"], Hostname = "host", Time = DateTimeOffset.UnixEpoch.AddSeconds(files.Length) }, Ct);
    }

    private static async Task<ObjectId> SaveTreeAsync(Repository repo, BlobWriter writer, List<Node> nodes)
    {
        var bytes = TreeCodec.Encode(nodes);
        var id = repo.Key.BlobId(bytes);
        await writer.SaveAsync(BlobType.Tree, id, bytes, Ct);
        return id;
    }

    /// <summary>Reads every file of a snapshot back, blob by blob, through a freshly opened repository.</summary>
    public static async Task<Dictionary<string, byte[]>> RestoreAsync(IStore store, ObjectId snapshotId)
    {
        var repo = await TestRepository.ReopenAsync(store);
        var snapshot = await repo.LoadSnapshotAsync(snapshotId, Ct);
        var root = await repo.LoadTreeAsync(snapshot.TreeId, Ct);
        var files = new Dictionary<string, byte[]>();
        foreach (var node in await repo.LoadTreeAsync(root.Single().Subtree!.Value, Ct))
        {
            var content = new List<byte>();
            foreach (var id in node.Content ?? [])
            {
                content.AddRange(await repo.ReadBlobAsync(id, Ct));
            }

            files[node.DisplayName] = content.ToArray();
        }

        return files;
    }

    public static async Task AssertRestoresAsync(IStore store, ObjectId snapshotId, params (string Name, byte[] Content)[] expected)
    {
        var restored = await RestoreAsync(store, snapshotId);
        Assert.Equal(expected.Select(e => e.Name).Order(StringComparer.Ordinal), restored.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, content) in expected)
        {
            Assert.True(content.AsSpan().SequenceEqual(restored[name]), $"{name} differs after restore");
        }
    }

    public Task ForgetAsync(ObjectId snapshot) => Store.DeleteAsync(new StoreHandle(FileKind.Snapshot, snapshot.ToString()), Ct);

    /// <summary>Prunes under an exclusive lock taken on <see cref="Store"/>; the pruner works through <paramref name="repo"/> (default: a fresh one).</summary>
    public Task<PruneResult> PruneAsync(PruneOptions? options = null, Action<PruneProgress>? progress = null) => PruneStoreAsync(Store, options, null, progress);

    /// <summary>
    /// Prunes through a repository opened on <paramref name="store"/>, under an exclusive lock taken through
    /// <paramref name="lockStore"/> (default: the same store), so that a faulty store can spare the lock's own files.
    /// </summary>
    public static async Task<PruneResult> PruneStoreAsync(IStore store, PruneOptions? options, IStore? lockStore = null, Action<PruneProgress>? progress = null, Repository? repo = null)
    {
        repo ??= await Repository.OpenAsync(store, TestRepository.Password);
        var lockRepo = await Repository.OpenAsync(lockStore ?? store, TestRepository.Password);
        await using var held = await RepositoryLock.AcquireAsync(lockRepo, exclusive: true, "prune", TimeSpan.Zero, Ct);
        return await new Pruner(repo, options) { OnProgress = progress }.RunAsync(held, Ct);
    }

    public static async Task<CheckResult> CheckAsync(IStore store) =>
        await new Checker(await TestRepository.ReopenAsync(store), new CheckOptions { ReadData = true }).RunAsync(Ct);

    public static void AssertNoErrors(CheckResult check) =>
        Assert.False(check.HasErrors, string.Join("\n", check.Problems.Where(p => p.IsError).Select(p => $"{p.Object}: {p.Message}")));

    public static void AssertClean(CheckResult check) =>
        Assert.True(check.Problems.Count == 0, string.Join("\n", check.Problems.Select(p => $"{p.Object}: {p.Message}")));

    public List<StoreHandle> Packs() => Store.Handles.Where(h => h.Kind == FileKind.Pack).ToList();

    /// <summary>Every file and its bytes, to show that a failed prune changed nothing.</summary>
    public Dictionary<StoreHandle, byte[]> Contents() => Store.Handles.ToDictionary(h => h, h => Store.Peek(h)!);

    public static MemoryStore Clone(MemoryStore source)
    {
        var copy = new MemoryStore();
        foreach (var h in source.Handles)
        {
            copy.Poke(h, source.Peek(h)!);
        }

        return copy;
    }

    /// <summary>Stores a pack no index names, as an interrupted backup leaves it.</summary>
    public async Task<ObjectId> WriteUnindexedPackAsync(byte[] content)
    {
        var id = Repo.Key.BlobId(content);
        var builder = new PackBuilder(Repo.Aead, 1 << 20);
        var (buffer, length, flags) = Repo.Codec.Encode(BlobType.Data, id, content, new EncodeScratch());
        builder.Add(id, BlobType.Data, flags, buffer.AsSpan(0, length), content.Length);
        var (bytes, name) = builder.Finish();
        await Store.PutAsync(new StoreHandle(FileKind.Pack, name.ToString()), bytes, Ct);
        return name;
    }
}


public class PrunerTests
{
    private static CancellationToken Ct => CancellationToken.None;

    private static readonly byte[] Shared = PruneFixture.RandomBytes(1, 16 * 4096);
    private static readonly byte[] OnlyA = PruneFixture.RandomBytes(2, 16 * 4096);
    private static readonly byte[] OnlyB = PruneFixture.RandomBytes(3, 16 * 4096);

    [Fact]
    public async Task ForgetThenPrune_RemovesOnlyTheDataTheForgottenSnapshotUsed()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        var b = await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        Assert.Equal(4, f.Packs().Count); // a: data + trees; b: data (only-b) + trees
        await f.ForgetAsync(a);

        var result = await f.PruneAsync();

        Assert.False(result.DryRun);
        Assert.Equal(1, result.PacksRepacked); // a's data pack: half of it (shared) is still used
        Assert.Equal(2, result.PacksDeleted); // that one and a's tree pack
        Assert.Equal(1, result.PacksWritten);
        Assert.Equal(16 + 2, result.BlobsRemoved); // only-a's chunks and a's two trees
        Assert.Equal(0, result.BytesStillUnused);
        Assert.True(result.BytesFreed > OnlyA.Length, $"freed {result.BytesFreed}");
        Assert.Equal(3, f.Packs().Count);

        var repo = await TestRepository.ReopenAsync(f.Store);
        Assert.DoesNotContain(Enumerable.Range(0, 16), i => repo.Index.Contains(repo.Key.BlobId(OnlyA.AsSpan(i * 4096, 4096))));
        Assert.All(Enumerable.Range(0, 16), i => Assert.True(repo.Index.Contains(repo.Key.BlobId(Shared.AsSpan(i * 4096, 4096)))));
        await PruneFixture.AssertRestoresAsync(f.Store, b, ("shared", Shared), ("only-b", OnlyB));
        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
    }

    [Fact]
    public async Task Repacking_KeepsEveryUsedBlobReadable_AndLeavesNoUnusedBytes()
    {
        var f = await PruneFixture.CreateAsync();
        var keep = new List<(ObjectId Id, (string, byte[])[] Files)>();
        var forget = new List<ObjectId>();
        for (int i = 0; i < 4; i++)
        {
            var kept = ($"kept-{i}", PruneFixture.RandomBytes(100 + i, 5 * 4096 + i));
            var dropped = ($"dropped-{i}", PruneFixture.RandomBytes(200 + i, 7 * 4096));
            forget.Add(await f.BackupAsync(kept, dropped));
            keep.Add((await f.BackupAsync(kept), [kept]));
        }

        foreach (var id in forget)
        {
            await f.ForgetAsync(id);
        }

        var result = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.FromPercent(0) });
        Assert.Equal(4, result.PacksRepacked);
        Assert.Equal(0, result.Plan.UnusedAfter);

        foreach (var (id, files) in keep)
        {
            await PruneFixture.AssertRestoresAsync(f.Store, id, files);
        }

        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
        var again = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.FromPercent(0), DryRun = true });
        Assert.True(again.Plan.NothingToDo);
        Assert.Equal(0, again.Plan.UnusedBytes);
    }

    [Fact]
    public async Task UnlimitedUnused_DeletesWholePacksOnly()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        var b = await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        await f.ForgetAsync(a);

        var result = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.Unlimited });
        Assert.Equal(0, result.PacksRepacked);
        Assert.Equal(1, result.PacksDeleted); // a's trees
        Assert.True(result.BytesStillUnused >= OnlyA.Length);
        await PruneFixture.AssertRestoresAsync(f.Store, b, ("shared", Shared), ("only-b", OnlyB));
        PruneFixture.AssertNoErrors(await PruneFixture.CheckAsync(f.Store));
    }

    [Fact]
    public async Task MaxUnused_AsAShare_StopsRepackingOnceTheRestFits()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        await f.ForgetAsync(a);

        // only-a is a third of what stays (shared + only-b + only-a): 40 % tolerates it, 30 % does not.
        var tolerant = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.FromPercent(40), DryRun = true });
        Assert.Equal(0, tolerant.Plan.PacksToRepack);
        var strict = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.FromPercent(30), DryRun = true });
        Assert.Equal(1, strict.Plan.PacksToRepack);
        var bytes = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.FromBytes(OnlyA.Length * 2L), DryRun = true });
        Assert.Equal(0, bytes.Plan.PacksToRepack);
        Assert.Equal(0, UnusedLimit.FromPercent(0).AllowedFor(1000));
        Assert.Equal(50, UnusedLimit.FromPercent(5).AllowedFor(950));
        Assert.Equal(long.MaxValue, UnusedLimit.FromPercent(100).AllowedFor(1000));
    }

    [Fact]
    public async Task MaxRepackSize_BoundsTheWorkOfOneRun()
    {
        var f = await PruneFixture.CreateAsync();
        var forget = new List<ObjectId>();
        var kept = new List<(string, byte[])>();
        for (int i = 0; i < 3; i++)
        {
            var k = ($"k{i}", PruneFixture.RandomBytes(300 + i, 8 * 4096));
            kept.Add(k);
            forget.Add(await f.BackupAsync(k, ($"d{i}", PruneFixture.RandomBytes(400 + i, 8 * 4096))));
        }

        var keep = await f.BackupAsync(kept.ToArray()); // dedups every kept file: only trees are new
        foreach (var id in forget)
        {
            await f.ForgetAsync(id);
        }

        long largest = f.Packs().Max(h => (long)f.Store.Peek(h)!.Length);
        var result = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.FromPercent(0), MaxRepackSize = largest });
        Assert.Equal(1, result.PacksRepacked);
        Assert.True(result.BytesStillUnused > 0);
        await PruneFixture.AssertRestoresAsync(f.Store, keep, kept.ToArray());

        var rest = await f.PruneAsync(new PruneOptions { MaxUnused = UnusedLimit.FromPercent(0) });
        Assert.Equal(2, rest.PacksRepacked);
        await PruneFixture.AssertRestoresAsync(f.Store, keep, kept.ToArray());
        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
    }

    [Fact]
    public async Task RepackSmall_MergesSmallPacks()
    {
        var f = await PruneFixture.CreateAsync();
        var snapshots = new List<(ObjectId, (string, byte[]))>();
        for (int i = 0; i < 4; i++)
        {
            var file = ($"f{i}", PruneFixture.RandomBytes(500 + i, 3 * 4096));
            snapshots.Add((await f.BackupAsync(file), file));
        }

        Assert.Equal(8, f.Packs().Count);
        Assert.True((await f.PruneAsync()).Plan.NothingToDo);

        var result = await f.PruneAsync(new PruneOptions { RepackSmall = true });
        Assert.Equal(8, result.PacksRepacked);
        Assert.Equal(2, result.PacksWritten); // one data pack, one tree pack
        Assert.Equal(2, f.Packs().Count);
        foreach (var (id, file) in snapshots)
        {
            await PruneFixture.AssertRestoresAsync(f.Store, id, file);
        }

        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
        Assert.True((await f.PruneAsync(new PruneOptions { RepackSmall = true })).Plan.NothingToDo); // one small pack per type stays put
    }

    [Fact]
    public async Task DuplicateCopies_CountAsUnused_AndExactlyOneCopyStays()
    {
        var f = await PruneFixture.CreateAsync();
        var first = await f.BackupAsync(("x", Shared));
        // A second writer that has not loaded the index stores everything again (two backups racing).
        var blind = await Repository.OpenAsync(f.Store, TestRepository.Password);
        var second = await PruneFixture.BackupAsync(blind, ("x", Shared));
        Assert.Equal(4, f.Packs().Count);

        var result = await f.PruneAsync();
        Assert.Equal(16 + 2, result.Plan.DuplicateBlobs);
        Assert.Equal(2, result.PacksDeleted);
        Assert.Equal(0, result.PacksRepacked);

        var indexFiles = await Task.WhenAll((await f.Repo.ListAsync(FileKind.Index, Ct)).Select(id => f.Repo.LoadIndexFileAsync(id, Ct)));
        var entries = indexFiles.Where(i => i.Supersedes.Count > 0).SelectMany(i => i.Packs).SelectMany(p => p.Blobs).ToList();
        Assert.Equal(18, entries.Count);
        Assert.Equal(entries.Count, entries.Select(e => e.Id).Distinct().Count());
        await PruneFixture.AssertRestoresAsync(f.Store, first, ("x", Shared));
        await PruneFixture.AssertRestoresAsync(f.Store, second, ("x", Shared));
        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
    }

    [Fact]
    public async Task UnindexedPacks_OfAnInterruptedBackup_AreDeleted()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("a", OnlyA));
        var orphan = await f.WriteUnindexedPackAsync(OnlyB.AsSpan(0, 4096).ToArray());
        var before = await PruneFixture.CheckAsync(f.Store);
        Assert.Contains(before.Problems, p => !p.IsError && p.Object.Contains(orphan.ToString(), StringComparison.Ordinal));

        var result = await f.PruneAsync();
        Assert.Equal(1, result.Plan.UnindexedPacks);
        Assert.Equal(1, result.PacksDeleted);
        Assert.Equal(0, result.Plan.IndexFilesToReplace); // the index did not name it, so it need not change
        Assert.Equal(0, result.IndexFilesWritten);
        Assert.DoesNotContain(f.Packs(), h => h.Name == orphan.ToString());
        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
        await PruneFixture.AssertRestoresAsync(f.Store, a, ("a", OnlyA));
    }

    [Fact]
    public async Task Prune_IsRefusedWhileABackupHoldsASharedLock()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("a", OnlyA));
        await f.ForgetAsync(a);
        var before = f.Contents();
        var backupRepo = await Repository.OpenAsync(f.Store, TestRepository.Password);
        await using (var backupLock = await RepositoryLock.AcquireAsync(backupRepo, exclusive: false, "backup", TimeSpan.Zero, Ct))
        {
            var e = await Assert.ThrowsAsync<HavenException>(() => f.PruneAsync());
            Assert.Equal(ErrorCode.LockConflict, e.Code);
            Assert.Contains("backup", e.Message);

            // Nor does the engine run under a lock that does not exclude writers.
            await Assert.ThrowsAsync<InvalidOperationException>(() => new Pruner(f.Repo).RunAsync(backupLock, Ct));
            await Assert.ThrowsAsync<InvalidOperationException>(() => new Pruner(f.Repo).RunAsync(null, Ct));
        }

        Assert.Equal(before.Keys.Select(h => h.ToString()).Order(StringComparer.Ordinal), f.Contents().Keys.Select(h => h.ToString()).Order(StringComparer.Ordinal));
        Assert.Equal(2, (await f.PruneAsync()).PacksDeleted); // once the backup is done
    }

    [Fact]
    public async Task DryRun_ReportsThePlan_AndChangesNothing()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        await f.ForgetAsync(a);
        await f.WriteUnindexedPackAsync(OnlyB.AsSpan(0, 100).ToArray());
        var before = f.Contents();

        var result = await new Pruner(f.Repo, new PruneOptions { DryRun = true }).RunAsync(null, Ct); // a dry run needs no exclusive lock
        Assert.True(result.DryRun);
        Assert.Equal(5, result.Plan.PacksTotal);
        Assert.Equal(1, result.Plan.PacksToDelete);
        Assert.Equal(1, result.Plan.PacksToRepack);
        Assert.Equal(1, result.Plan.UnindexedPacks);
        Assert.Equal(2, result.Plan.PacksToKeep);
        Assert.Equal(16 + 2, result.Plan.BlobsToRemove);
        Assert.Equal(1, result.Plan.Snapshots);
        Assert.Equal(0, result.PacksDeleted);
        Assert.Equal(before.Count, f.Contents().Count);
        Assert.All(before, kv => Assert.Equal(kv.Value, f.Store.Peek(kv.Key)));
    }

    [Fact]
    public async Task IgnoredSnapshots_ArePlannedAsIfTheyWereGone()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        var withA = await new Pruner(f.Repo, new PruneOptions { DryRun = true }).RunAsync(null, Ct);
        Assert.True(withA.Plan.NothingToDo);
        var withoutA = await new Pruner(f.Repo, new PruneOptions { DryRun = true, IgnoreSnapshots = new HashSet<ObjectId> { a } }).RunAsync(null, Ct);
        Assert.Equal(1, withoutA.Plan.PacksToDelete);
        Assert.Equal(1, withoutA.Plan.PacksToRepack);
    }

    [Fact]
    public async Task NothingToPrune_WritesAndDeletesNothing()
    {
        var f = await PruneFixture.CreateAsync();
        Assert.True((await f.PruneAsync()).Plan.NothingToDo); // empty repository
        var a = await f.BackupAsync(("a", OnlyA));
        var before = f.Contents();
        var result = await f.PruneAsync();
        Assert.True(result.Plan.NothingToDo);
        Assert.Equal((0, 0, 0), (result.PacksDeleted, result.IndexFilesWritten, result.IndexFilesDeleted));
        Assert.Equal(before.Count, f.Contents().Count);
        await PruneFixture.AssertRestoresAsync(f.Store, a, ("a", OnlyA));
    }

    [Fact]
    public async Task ForgettingEverything_EmptiesTheRepository_AndLeavesOneEmptyIndex()
    {
        var f = await PruneFixture.CreateAsync();
        await f.ForgetAsync(await f.BackupAsync(("a", OnlyA)));
        await f.ForgetAsync(await f.BackupAsync(("b", OnlyB)));
        var result = await f.PruneAsync();
        Assert.Equal(4, result.PacksDeleted);
        Assert.Empty(f.Packs());
        var index = Assert.Single(await f.Repo.ListAsync(FileKind.Index, Ct));
        Assert.Empty((await f.Repo.LoadIndexFileAsync(index, Ct)).Packs);
        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
    }

    [Fact]
    public async Task LargeIndexes_AreSplit_AndOnlyTheLastFileSupersedes()
    {
        var f = await PruneFixture.CreateAsync();
        var keep = new List<(ObjectId, (string, byte[]))>();
        for (int i = 0; i < 5; i++)
        {
            var file = ($"f{i}", PruneFixture.RandomBytes(600 + i, 6 * 4096));
            keep.Add((await f.BackupAsync(file), file));
        }

        await f.ForgetAsync(keep[0].Item1);
        keep.RemoveAt(0);
        var oldIndex = await f.Repo.ListAsync(FileKind.Index, Ct);
        var result = await f.PruneAsync(new PruneOptions { MaxBlobsPerIndex = 10 });
        Assert.Equal(oldIndex.Count, result.IndexFilesDeleted);

        var files = await Task.WhenAll((await f.Repo.ListAsync(FileKind.Index, Ct)).Select(id => f.Repo.LoadIndexFileAsync(id, Ct)));
        Assert.Equal(result.IndexFilesWritten, files.Length);
        Assert.True(files.Length >= 3, $"{files.Length} index files");
        var superseding = Assert.Single(files, i => i.Supersedes.Count > 0);
        Assert.Equal(oldIndex.Order(), superseding.Supersedes.Order());
        Assert.All(files.Where(i => i.Supersedes.Count == 0), i => Assert.True(i.BlobCount <= 10 || i.Packs.Count == 1));
        foreach (var (id, file) in keep)
        {
            await PruneFixture.AssertRestoresAsync(f.Store, id, file);
        }

        PruneFixture.AssertClean(await PruneFixture.CheckAsync(f.Store));
    }

    [Fact]
    public async Task WithALocalCache_RepackedTreesAreCached_AndDeletedTreePacksLeaveIt()
    {
        var f = await PruneFixture.CreateAsync();
        var cacheRoot = Path.Combine(Path.GetTempPath(), "haven-prune-cache-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            f.Repo.UseCache(cacheRoot);
            var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
            var b = await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
            await f.BackupAsync(("c", PruneFixture.RandomBytes(800, 4096)));
            await f.ForgetAsync(a);
            var cached = Path.Combine(f.Repo.Cache!.Directory, "data");
            Assert.Equal(3, Directory.GetFiles(cached).Length); // the three tree packs

            var repo = await Repository.OpenAsync(f.Store, TestRepository.Password);
            repo.UseCache(cacheRoot);
            var result = await PruneFixture.PruneStoreAsync(f.Store, new PruneOptions { RepackSmall = true }, null, null, repo);
            Assert.True(result.PacksRepacked >= 2);
            var treePacks = f.Packs().Select(h => h.Name).Where(n => (f.Store.Peek(new StoreHandle(FileKind.Pack, n))!).Length < 4000).ToHashSet();
            Assert.Equal(treePacks.Order(), Directory.GetFiles(cached).Select(Path.GetFileName).Order()!);
            await PruneFixture.AssertRestoresAsync(f.Store, b, ("shared", Shared), ("only-b", OnlyB));
        }
        finally
        {
            Directory.Delete(cacheRoot, recursive: true);
        }
    }

    [Fact]
    public async Task Progress_ReportsEveryPhaseInOrder()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        await f.ForgetAsync(a);
        var phases = new List<PrunePhase>();
        await f.PruneAsync(null, p =>
        {
            lock (phases)
            {
                if (phases.Count == 0 || phases[^1] != p.Phase)
                {
                    phases.Add(p.Phase);
                }
            }
        });
        Assert.Equal(Enum.GetValues<PrunePhase>(), phases);
    }

    [Fact]
    public async Task ADamagedTree_StopsPruneBeforeAnythingIsDeleted()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        var b = await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        await f.ForgetAsync(a);
        await f.WriteUnindexedPackAsync(OnlyB.AsSpan(0, 100).ToArray());

        var repo = await TestRepository.ReopenAsync(f.Store);
        var root = await repo.LoadTreeAsync((await repo.LoadSnapshotAsync(b, Ct)).TreeId, Ct);
        Assert.True(repo.TryLocate(root.Single().Subtree!.Value, out var location));
        var handle = new StoreHandle(FileKind.Pack, location.Pack.ToString());
        var pack = f.Store.Peek(handle)!;
        pack[location.Blob.Offset + 20] ^= 0x10;
        f.Store.Poke(handle, pack);
        var before = f.Contents();

        var e = await Assert.ThrowsAsync<HavenException>(() => f.PruneAsync());
        Assert.Equal(ErrorCode.Corrupt, e.Code);
        Assert.Contains("before deleting anything", e.Message);
        Assert.Contains($"tree {location.Blob.Id.Short}", e.Message);
        Assert.Contains("check", e.Hint);
        Assert.Equal(before.Count, f.Contents().Count);
        Assert.All(before, kv => Assert.Equal(kv.Value, f.Store.Peek(kv.Key)));
    }

    [Fact]
    public async Task ADamagedIndexFile_StopsPrune_SoItsPacksAreNotTakenForGarbage()
    {
        var f = await PruneFixture.CreateAsync();
        await f.ForgetAsync(await f.BackupAsync(("a", OnlyA)));
        await f.BackupAsync(("b", OnlyB));
        var victim = (await f.Repo.ListAsync(FileKind.Index, Ct))[0];
        var handle = new StoreHandle(FileKind.Index, victim.ToString());
        var bytes = f.Store.Peek(handle)!;
        bytes[^3] ^= 1;
        f.Store.Poke(handle, bytes);
        var before = f.Contents();

        var e = await Assert.ThrowsAsync<HavenException>(() => f.PruneAsync());
        Assert.Equal(ErrorCode.Corrupt, e.Code);
        Assert.Contains($"index/{victim}", e.Message);
        Assert.Contains("repair index", e.Hint);
        Assert.Equal(before.Count, f.Contents().Count);
    }

    [Fact]
    public async Task ALostIndexFile_StopsPrune_InsteadOfDeletingTheOnlyCopyOfTheData()
    {
        var f = await PruneFixture.CreateAsync();
        await f.BackupAsync(("a", OnlyA));
        var beforeB = await f.Repo.ListAsync(FileKind.Index, Ct);
        await f.BackupAsync(("b", OnlyB));
        var bIndex = (await f.Repo.ListAsync(FileKind.Index, Ct)).Except(beforeB).Single();
        await f.Store.DeleteAsync(new StoreHandle(FileKind.Index, bIndex.ToString()), Ct); // b's packs are now unindexed
        var packs = f.Packs().Count;

        var e = await Assert.ThrowsAsync<HavenException>(() => f.PruneAsync());
        Assert.Equal(ErrorCode.Corrupt, e.Code);
        Assert.Contains("in no index", e.Message);
        Assert.Equal(packs, f.Packs().Count);
    }

    [Fact]
    public async Task ADamagedBlobToBeRepacked_StopsPruneBeforeAnythingIsDeleted()
    {
        var f = await PruneFixture.CreateAsync();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        await f.BackupAsync(("shared", Shared), ("only-b", OnlyB));
        await f.ForgetAsync(a);
        var repo = await TestRepository.ReopenAsync(f.Store);
        Assert.True(repo.TryLocate(repo.Key.BlobId(Shared.AsSpan(0, 4096)), out var location));
        var handle = new StoreHandle(FileKind.Pack, location.Pack.ToString());
        var pack = f.Store.Peek(handle)!;
        pack[location.Blob.Offset + 30] ^= 0x04;
        f.Store.Poke(handle, pack);
        var packs = f.Packs().Select(h => h.Name).ToHashSet();
        var index = (await f.Repo.ListAsync(FileKind.Index, Ct)).ToHashSet();

        var e = await Assert.ThrowsAsync<HavenException>(() => f.PruneAsync());
        Assert.Equal(ErrorCode.Corrupt, e.Code);
        Assert.Contains("damaged", e.Message);
        Assert.Subset(f.Packs().Select(h => h.Name).ToHashSet(), packs); // none deleted
        Assert.Subset((await f.Repo.ListAsync(FileKind.Index, Ct)).ToHashSet(), index);
    }

    /// <summary>
    /// A repository with everything prune does at once: a forgotten snapshot whose data pack is partly shared (repack),
    /// one whose packs are wholly unused (delete), small packs (repack-small), an unindexed pack, and index files
    /// split small, so that puts and deletes interleave in every step.
    /// </summary>
    private static async Task<(MemoryStore Store, List<(ObjectId Id, (string, byte[])[] Files)> Kept, ObjectId Later, (string, byte[])[] LaterFiles)> CrashScenarioAsync()
    {
        var f = await PruneFixture.CreateAsync();
        var kept = new List<(ObjectId, (string, byte[])[])>();
        var a = await f.BackupAsync(("shared", Shared), ("only-a", OnlyA));
        (string, byte[])[] bFiles = [("shared", Shared), ("only-b", OnlyB)];
        kept.Add((await f.BackupAsync(bFiles), bFiles));
        var c = await f.BackupAsync(("c", PruneFixture.RandomBytes(700, 5 * 4096)));
        (string, byte[])[] dFiles = [("d", PruneFixture.RandomBytes(701, 3 * 4096))];
        var later = await f.BackupAsync(dFiles);
        (string, byte[])[] eFiles = [("e", PruneFixture.RandomBytes(702, 2 * 4096)), ("d", dFiles[0].Item2)];
        kept.Add((await f.BackupAsync(eFiles), eFiles));
        await f.WriteUnindexedPackAsync(PruneFixture.RandomBytes(703, 1000));
        await f.ForgetAsync(a);
        await f.ForgetAsync(c);
        return (f.Store, kept, later, dFiles);
    }

    private static readonly PruneOptions CrashOptions = new()
    {
        MaxUnused = UnusedLimit.FromPercent(0),
        RepackSmall = true,
        MaxBlobsPerIndex = 12,
        PacksPerIndex = 1,
        Concurrency = 1,
        RepackReadConcurrency = 1,
    };

    [Theory]
    [InlineData(StoreOperation.Put)]
    [InlineData(StoreOperation.Delete)]
    public async Task ACrashAtAnyPutOrDelete_LeavesARepositoryThatChecksClean_AndLosesNoSnapshotData(StoreOperation operation)
    {
        var (template, kept, later, laterFiles) = await CrashScenarioAsync();
        var counting = new FaultyStore(PruneFixture.Clone(template));
        var full = await PruneFixture.PruneStoreAsync(counting, CrashOptions, counting.Inner);
        Assert.True(full.PacksRepacked > 2 && full.IndexFilesWritten > 2, $"repacked {full.PacksRepacked}, index files {full.IndexFilesWritten}");
        int calls = counting.CallCount(operation);
        Assert.True(calls >= 4, $"{calls} calls of {operation}");

        for (int n = 1; n <= calls; n++)
        {
            var store = PruneFixture.Clone(template);
            var crashing = new FaultyStore(store);
            crashing.CrashAt(operation, n);
            await Assert.ThrowsAsync<StoreException>(() => PruneFixture.PruneStoreAsync(crashing, CrashOptions, store));
            Assert.True(crashing.Crashed);

            var check = await PruneFixture.CheckAsync(store);
            Assert.False(check.HasErrors, $"after a crash at {operation} {n}/{calls}:\n" + string.Join("\n", check.Problems.Where(p => p.IsError).Select(p => $"{p.Object}: {p.Message}")));
            foreach (var (id, files) in kept)
            {
                await PruneFixture.AssertRestoresAsync(store, id, files);
            }

            await PruneFixture.AssertRestoresAsync(store, later, laterFiles);

            // The next prune finishes the work; one that must rewrite the index again leaves nothing stale behind.
            await PruneFixture.PruneStoreAsync(store, CrashOptions);
            PruneFixture.AssertClean(await PruneFixture.CheckAsync(store));
            await store.DeleteAsync(new StoreHandle(FileKind.Snapshot, later.ToString()), Ct);
            var after = await PruneFixture.PruneStoreAsync(store, CrashOptions);
            Assert.False(after.Plan.NothingToDo);
            PruneFixture.AssertClean(await PruneFixture.CheckAsync(store));
            foreach (var (id, files) in kept)
            {
                await PruneFixture.AssertRestoresAsync(store, id, files);
            }
        }
    }
}
