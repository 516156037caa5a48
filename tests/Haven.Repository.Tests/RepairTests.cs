using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Haven.Core;
using Haven.Core.Posix;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;
using Haven.Storage;
using Haven.Testing;
using Xunit;

namespace Haven.Repository.Tests;

public class RepairTests
{
    private static CancellationToken Ct => CancellationToken.None;

    // ---- repair index ---------------------------------------------------------------------------------------------

    [Fact]
    public async Task RepairIndex_AfterAnIndexFileIsDeleted_IndexesEveryBlobAgain()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var blobs = await WriteBatchesAsync(repo, batches: 3, perBatch: 10);
        var indexFiles = await repo.ListAsync(FileKind.Index, Ct);
        Assert.Equal(3, indexFiles.Count);
        await store.DeleteAsync(new StoreHandle(FileKind.Index, indexFiles[0].ToString()), Ct);
        Assert.True((await TestRepository.ReopenAsync(store)).Index.Count < blobs.Count);

        var result = await new IndexRepairer(repo).RunAsync(Ct);

        Assert.Equal((3, 0, 1, 2, 0), (result.PacksRead, result.PacksDamaged, result.OrphanPacksIndexed, result.IndexFilesRemoved, result.MissingPacksDropped));
        Assert.Equal((long)blobs.Count, result.BlobsIndexed);
        Assert.Empty(result.Problems);
        var again = await TestRepository.ReopenAsync(store);
        foreach (var (id, content) in blobs)
        {
            Assert.Equal(content, await again.ReadBlobAsync(id, Ct));
        }

        // Only the new index remains, and it says which files it replaced.
        var newFiles = await again.ListAsync(FileKind.Index, Ct);
        Assert.Equal(result.IndexFilesWritten, newFiles.Count);
        Assert.DoesNotContain(newFiles, indexFiles.Contains);
        var supersedes = (await Task.WhenAll(newFiles.Select(f => again.LoadIndexFileAsync(f, Ct)))).SelectMany(f => f.Supersedes).ToHashSet();
        Assert.Equal(indexFiles.Skip(1).ToHashSet(), supersedes);
    }

    [Fact]
    public async Task RepairIndex_ReplacesADamagedIndexFile()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var blobs = await WriteBatchesAsync(repo, batches: 2, perBatch: 5);
        var damaged = (await repo.ListAsync(FileKind.Index, Ct))[0];
        var handle = new StoreHandle(FileKind.Index, damaged.ToString());
        var bytes = store.Peek(handle)!;
        bytes[bytes.Length / 2] ^= 0x10;
        store.Poke(handle, bytes);
        var e = await Assert.ThrowsAsync<HavenException>(() => TestRepository.ReopenAsync(store));
        Assert.Equal(ErrorCode.Corrupt, e.Code);

        var result = await new IndexRepairer(repo).RunAsync(Ct);

        var problem = Assert.Single(result.Problems);
        Assert.Equal($"index/{damaged}", problem.Object);
        Assert.Equal((2, 1, 2), (result.PacksRead, result.OrphanPacksIndexed, result.IndexFilesRemoved));
        Assert.Null(store.Peek(handle));
        var again = await TestRepository.ReopenAsync(store);
        Assert.Equal(blobs.Count, again.Index.Count);
        foreach (var (id, content) in blobs)
        {
            Assert.Equal(content, await again.ReadBlobAsync(id, Ct));
        }
    }

    [Fact]
    public async Task RepairIndex_WithADamagedPackHeader_ReportsThePack_KeepsItsOldEntries_AndReadsTheOthers()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var blobs = await WriteBatchesAsync(repo, batches: 3, perBatch: 4);
        var pack = repo.Index.Packs()[1];
        var handle = new StoreHandle(FileKind.Pack, pack.ToString());
        var bytes = store.Peek(handle)!;
        int headerLength = (int)BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(bytes.Length - 4));
        bytes[bytes.Length - 4 - headerLength + 20] ^= 0x01;
        store.Poke(handle, bytes);

        var result = await new IndexRepairer(repo).RunAsync(Ct);

        Assert.Equal((2, 1, 0), (result.PacksRead, result.PacksDamaged, result.OrphanPacksIndexed));
        var problem = Assert.Single(result.Problems);
        Assert.Equal(StoreLayout.PathOf(handle), problem.Object);
        Assert.Contains("authentication", problem.Message);
        Assert.Contains("kept", problem.Message);
        var again = await TestRepository.ReopenAsync(store);
        Assert.Equal(blobs.Count, again.Index.Count);
        foreach (var (id, content) in blobs)
        {
            Assert.True(again.TryLocate(id, out var location));
            if (location.Pack != pack)
            {
                Assert.Equal(content, await again.ReadBlobAsync(id, Ct));
            }
        }
    }

    [Fact]
    public async Task RepairIndex_DropsThePacksThatNoLongerExist()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var blobs = await WriteBatchesAsync(repo, batches: 2, perBatch: 3);
        var lost = repo.Index.Packs()[0];
        await store.DeleteAsync(new StoreHandle(FileKind.Pack, lost.ToString()), Ct);
        var lostBlobs = repo.Index.All().Where(b => b.Pack == lost).Select(b => b.Blob.Id).ToHashSet();

        var result = await new IndexRepairer(repo).RunAsync(Ct);

        Assert.Equal((1, 1), (result.PacksRead, result.MissingPacksDropped));
        var again = await TestRepository.ReopenAsync(store);
        Assert.Equal(blobs.Count - lostBlobs.Count, again.Index.Count);
        Assert.All(lostBlobs, id => Assert.False(again.Index.Contains(id)));
        Assert.False((await new Checker(again, new CheckOptions { ReadData = true }).RunAsync(Ct)).HasErrors);
    }

    // ---- repair snapshots -----------------------------------------------------------------------------------------

    [Fact]
    public async Task RepairSnapshots_DropsFilesWithLostData_EmptiesLostDirectories_AndLeavesIntactSnapshotsAlone()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var tree = new TreeBuilder(repo);
        var intactRoot = await tree.DirAsync(("keep.txt", tree.File("kept")));
        var damagedRoot = await tree.DirAsync(
            ("dir", await tree.DirAsync(("a", tree.File("a content")), ("b", tree.LostFile()))),
            ("lost-dir", tree.LostDir()),
            ("top", tree.File("top content")));
        var intact = await tree.SnapshotAsync(intactRoot, time: 1);
        var damaged = await tree.SnapshotAsync(damagedRoot, time: 2, tags: ["nightly"]);
        Assert.True((await new Checker(repo, new CheckOptions()).RunAsync(Ct)).HasErrors);

        var result = await new SnapshotRepairer(repo, new SnapshotRepairOptions { Forget = true }).RunAsync(Ct);

        Assert.Equal((2, 1), (result.SnapshotsChecked, result.SnapshotsUnchanged));
        var repaired = Assert.Single(result.Repaired);
        Assert.Equal(damaged, repaired.Original);
        Assert.True(repaired.OriginalRemoved);
        Assert.Equal(
            [("/dir/b", SnapshotRepairKind.FileRemoved), ("/lost-dir", SnapshotRepairKind.DirectoryEmptied)],
            repaired.Changes.Select(c => (c.Path, c.Kind)).Order().ToArray());

        var snapshots = await repo.LoadSnapshotsAsync(Ct);
        Assert.Equal([intact, repaired.Repaired!.Value], snapshots.Select(s => s.Id).ToArray());
        var saved = snapshots[1].Snapshot;
        Assert.Equal(["nightly", "repaired"], saved.Tags);
        Assert.Equal(damaged.ToString(), saved.Original);
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(2), saved.Time);
        Assert.Equal(
            ["/dir/", "/dir/a=a content", "/lost-dir/", "/top=top content"],
            await FlattenAsync(repo, saved.TreeId));
        Assert.False((await new Checker(await TestRepository.ReopenAsync(store), new CheckOptions()).RunAsync(Ct)).HasErrors);
    }

    [Fact]
    public async Task RepairSnapshots_DryRun_ReportsButWritesNothing()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var tree = new TreeBuilder(repo);
        var original = await tree.SnapshotAsync(await tree.DirAsync(("f", tree.LostFile())), time: 1);
        var files = store.Handles.ToHashSet();

        var result = await new SnapshotRepairer(repo, new SnapshotRepairOptions { Forget = true, DryRun = true }).RunAsync(Ct);

        var repaired = Assert.Single(result.Repaired);
        Assert.Null(repaired.Repaired);
        Assert.False(repaired.OriginalRemoved);
        Assert.Equal("/f", Assert.Single(repaired.Changes).Path);
        Assert.Equal(files, store.Handles.ToHashSet());
        Assert.Equal(original, Assert.Single(await repo.LoadSnapshotsAsync(Ct)).Id);
    }

    [Fact]
    public async Task RepairSnapshots_ReportsSnapshotFilesThatDoNotOpen_AndRemovesThemOnlyWithForget()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var tree = new TreeBuilder(repo);
        var id = await tree.SnapshotAsync(await tree.DirAsync(("f", tree.File("x"))), time: 1);
        var handle = new StoreHandle(FileKind.Snapshot, id.ToString());
        var bytes = store.Peek(handle)!;
        bytes[^1] ^= 0x80;
        store.Poke(handle, bytes);

        var kept = await new SnapshotRepairer(repo, new SnapshotRepairOptions()).RunAsync(Ct);
        Assert.Equal(id, Assert.Single(kept.Damaged).Id);
        Assert.False(kept.Damaged[0].Removed);
        Assert.NotNull(store.Peek(handle));

        var removed = await new SnapshotRepairer(repo, new SnapshotRepairOptions { Forget = true }).RunAsync(Ct);
        Assert.True(Assert.Single(removed.Damaged).Removed);
        Assert.Null(store.Peek(handle));
    }

    [Fact]
    public async Task RepairSnapshots_OfSelectedSnapshots_TouchesNoOther()
    {
        var repo = await TestRepository.CreateAsync();
        var tree = new TreeBuilder(repo);
        var first = await tree.SnapshotAsync(await tree.DirAsync(("f", tree.LostFile())), time: 1);
        var second = await tree.SnapshotAsync(await tree.DirAsync(("g", tree.LostFile())), time: 2);

        var result = await new SnapshotRepairer(repo, new SnapshotRepairOptions { Snapshots = [second], Forget = true }).RunAsync(Ct);

        Assert.Equal(second, Assert.Single(result.Repaired).Original);
        var ids = (await repo.LoadSnapshotsAsync(Ct)).Select(s => s.Id).ToList();
        Assert.Contains(first, ids);
        Assert.DoesNotContain(second, ids);
    }

    // ---- copy -----------------------------------------------------------------------------------------------------

    [Fact]
    public async Task Copy_BetweenRepositoriesWithDifferentKeys_RewritesIds_AndSendsNothingTheSecondTime()
    {
        var source = await TestRepository.CreateAsync();
        var tree = new TreeBuilder(source);
        var shared = tree.File(new string('s', 10_000));
        var root = await tree.DirAsync(
            ("a", await tree.DirAsync(("one", shared), ("two", tree.File("two")))),
            ("b", await tree.DirAsync(("one", shared), ("two", tree.File("two")))),
            ("link", new Node { Name = [], Type = FileType.Symlink, LinkTarget = "a/one"u8.ToArray() }));
        var id = await tree.SnapshotAsync(root, time: 5, tags: ["t"]);
        var destinationStore = new FaultyStore(new MemoryStore());
        var destination = await TestRepository.CreateAsync(destinationStore);

        var result = await new Copier(source, destination).RunAsync(await source.LoadSnapshotsAsync(Ct), Ct);

        Assert.False(result.SameIdKey);
        Assert.Equal((1, 0), (result.SnapshotsCopied, result.SnapshotsSkipped));
        Assert.Equal(2L, result.TreeBlobsCopied); // the root, and one tree for a and b (equal, so copied once)
        var copy = Assert.Single(await destination.LoadSnapshotsAsync(Ct));
        Assert.Equal(id.ToString(), copy.Snapshot.Original);
        Assert.Equal(["t"], copy.Snapshot.Tags);
        Assert.NotEqual(root.Subtree, copy.Snapshot.TreeId);
        var reopened = await TestRepository.ReopenAsync(destinationStore);
        Assert.Equal(await FlattenAsync(source, root.Subtree!.Value), await FlattenAsync(reopened, copy.Snapshot.TreeId));
        Assert.False((await new Checker(reopened, new CheckOptions { ReadData = true }).RunAsync(Ct)).HasErrors);

        long before = destinationStore.BytesPut;
        var again = await new Copier(source, reopened).RunAsync(await source.LoadSnapshotsAsync(Ct), Ct);
        Assert.Equal((0, 1, 0L, 0L), (again.SnapshotsCopied, again.SnapshotsSkipped, again.DataBlobsCopied, again.TreeBlobsCopied));
        Assert.Equal(before, destinationStore.BytesPut);
    }

    [Fact]
    public async Task Copy_WithTheSameKey_KeepsTreeIds_AndReadsNoDataTheDestinationHas()
    {
        var sourceStore = new MemoryStore();
        var source = await TestRepository.CreateAsync(sourceStore);
        var destinationStore = new MemoryStore();
        foreach (var h in sourceStore.Handles.Where(h => h.Kind is FileKind.Config or FileKind.Key))
        {
            destinationStore.Poke(h, sourceStore.Peek(h)!);
        }

        var destination = await TestRepository.ReopenAsync(destinationStore);
        var tree = new TreeBuilder(source);
        var big = tree.File(new string('b', 50_000));
        var first = await tree.DirAsync(("big", big));
        await tree.SnapshotAsync(first, time: 1);
        var copied = await new Copier(source, destination).RunAsync(await source.LoadSnapshotsAsync(Ct), Ct);
        Assert.True(copied.SameIdKey);
        Assert.Equal(first.Subtree, Assert.Single(await destination.LoadSnapshotsAsync(Ct)).Snapshot.TreeId);

        var second = await tree.DirAsync(("big", big), ("small", tree.File("small")));
        await tree.SnapshotAsync(second, time: 2);
        var result = await new Copier(source, destination).RunAsync(await source.LoadSnapshotsAsync(Ct), Ct);

        Assert.Equal((1, 1, 1L), (result.SnapshotsCopied, result.SnapshotsSkipped, result.DataBlobsCopied));
        Assert.Equal((1L, 1L), (result.TreesRead, result.DataBlobsRead)); // the new root and "small"; "big" is never read
        var copies = await (await TestRepository.ReopenAsync(destinationStore)).LoadSnapshotsAsync(Ct);
        Assert.Equal([first.Subtree!.Value, second.Subtree!.Value], copies.Select(c => c.Snapshot.TreeId).ToArray());
    }

    // ---- helpers --------------------------------------------------------------------------------------------------

    /// <summary>Writes <paramref name="batches"/> flushes of data blobs: one pack and one index file each.</summary>
    private static async Task<List<(ObjectId Id, byte[] Content)>> WriteBatchesAsync(Repository repo, int batches, int perBatch)
    {
        var blobs = new List<(ObjectId, byte[])>();
        await using var writer = new BlobWriter(repo);
        for (int b = 0; b < batches; b++)
        {
            for (int i = 0; i < perBatch; i++)
            {
                var content = RandomNumberGenerator.GetBytes(1000 + i);
                var id = repo.Key.BlobId(content);
                await writer.SaveAsync(BlobType.Data, id, content, Ct);
                blobs.Add((id, content));
            }

            await writer.FlushAsync(Ct);
        }

        return blobs;
    }

    /// <summary>Every entry below a tree as "path=content" (files), "path/" (directories) or "path->target", in order.</summary>
    private static async Task<string[]> FlattenAsync(Repository repo, ObjectId tree)
    {
        var lines = new List<string>();
        async Task Walk(ObjectId id, string prefix)
        {
            foreach (var node in await repo.LoadTreeAsync(id, Ct))
            {
                string path = prefix + "/" + node.DisplayName;
                switch (node.Type)
                {
                    case FileType.Directory:
                        lines.Add(path + "/");
                        await Walk(node.Subtree!.Value, path);
                        break;
                    case FileType.Symlink:
                        lines.Add(path + "->" + PosixPath.ToDisplay(node.LinkTarget!));
                        break;
                    default:
                        var content = new List<byte>();
                        foreach (var blob in node.Content ?? [])
                        {
                            content.AddRange(await repo.ReadBlobAsync(blob, Ct));
                        }

                        lines.Add(path + "=" + Encoding.UTF8.GetString(content.ToArray()));
                        break;
                }
            }
        }

        await Walk(tree, "");
        return lines.ToArray();
    }

    /// <summary>Builds trees and snapshots directly through a <see cref="BlobWriter"/>.</summary>
    private sealed class TreeBuilder(Repository repo)
    {
        private readonly BlobWriter _writer = new(repo);
        private readonly List<(ObjectId Id, byte[] Content)> _pending = [];

        /// <summary>A file of <paramref name="text"/>, cut into 4 KiB chunks (saved with the next directory).</summary>
        public Node File(string text)
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            var ids = new List<ObjectId>();
            for (int offset = 0; offset < bytes.Length; offset += 4096)
            {
                var chunk = bytes.AsSpan(offset, Math.Min(4096, bytes.Length - offset)).ToArray();
                var id = repo.Key.BlobId(chunk);
                _pending.Add((id, chunk));
                ids.Add(id);
            }

            return new Node { Name = [], Type = FileType.Regular, Mode = 0x1A4, Size = bytes.Length, ModifyTimeNs = 1_000_000_007, Content = ids };
        }

        /// <summary>A file whose data was never stored.</summary>
        public Node LostFile() => new()
        {
            Name = [], Type = FileType.Regular, Mode = 0x1A4, Size = 10, Content = [repo.Key.BlobId(RandomNumberGenerator.GetBytes(10))],
        };

        /// <summary>A directory whose tree was never stored.</summary>
        public Node LostDir() => new() { Name = [], Type = FileType.Directory, Mode = 0x1ED, Subtree = repo.Key.BlobId(RandomNumberGenerator.GetBytes(10)) };

        /// <summary>A directory node of the given children (names applied here), its tree saved.</summary>
        public async Task<Node> DirAsync(params (string Name, Node Node)[] children)
        {
            foreach (var (id, content) in _pending)
            {
                await _writer.SaveAsync(BlobType.Data, id, content, Ct);
            }

            _pending.Clear();
            var nodes = children
                .Select(c => Named(c.Node, c.Name))
                .OrderBy(n => n.Name, Comparer<byte[]>.Create((x, y) => x.AsSpan().SequenceCompareTo(y)))
                .ToList();
            var bytes = TreeCodec.Encode(nodes);
            var treeId = repo.Key.BlobId(bytes);
            await _writer.SaveAsync(BlobType.Tree, treeId, bytes, Ct);
            return new Node { Name = [], Type = FileType.Directory, Mode = 0x1ED, ModifyTimeNs = 2_000_000_009, Subtree = treeId };
        }

        public async Task<ObjectId> SnapshotAsync(Node root, int time, string[]? tags = null)
        {
            await _writer.FlushAsync(Ct);
            return await repo.SaveSnapshotAsync(new Snapshot
            {
                Tree = root.Subtree!.Value.ToString(),
                Paths = ["/data"],
                Hostname = "host",
                Time = DateTimeOffset.FromUnixTimeSeconds(time),
                Tags = tags ?? [],
            }, Ct);
        }

        private static Node Named(Node n, string name) => new()
        {
            Name = Encoding.UTF8.GetBytes(name),
            Type = n.Type,
            Mode = n.Mode,
            Size = n.Size,
            ModifyTimeNs = n.ModifyTimeNs,
            Content = n.Content,
            Subtree = n.Subtree,
            LinkTarget = n.LinkTarget,
        };
    }
}
