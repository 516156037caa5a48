using Haven.Core;
using Haven.Core.Posix;
using Haven.Files.Backup;
using Haven.Files.Filters;
using Haven.Files.Restore;
using Haven.Repository;
using Haven.Repository.Maintenance;
using Haven.Repository.Model;
using Haven.Storage;
using Haven.Testing;
using Xunit;
using PosixCalls = Haven.Core.Posix.Posix;

namespace Haven.Files.Tests;

/// <summary>Repair, copy, diff and find on real backups of <see cref="TestTree.CreateHardCases"/>.</summary>
public class RepairCopyTests
{
    private static CancellationToken Ct => CancellationToken.None;

    private static CompareOptions Exact => new(Ownership: PosixCalls.IsRoot);

    [Fact]
    public async Task LostPack_AfterRepairIndexAndRepairSnapshots_CheckIsClean_AndEverythingElseRestores()
    {
        await using var s = new Scratch();
        TestTree.CreateHardCases(s.Source, includeLargeFile: false, seed: 11);
        var repo = await CreateWithSmallPacksAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        Assert.Equal(0, backup.ErrorCount);

        // Lose the pack that holds files/size-4095 (one chunk: its id is the HMAC of the whole file).
        var victim = repo.Key.BlobId(File.ReadAllBytes(Path.Combine(s.Source, "files", "size-4095")));
        Assert.True(repo.TryLocate(victim, out var location));
        Assert.True(repo.Index.Packs().Count > 4, $"only {repo.Index.Packs().Count} packs: the test needs several");
        await s.Store.DeleteAsync(new StoreHandle(FileKind.Pack, location.Pack.ToString()), Ct);

        repo = await TestRepository.ReopenAsync(s.Store);
        Assert.True((await new Checker(repo, new CheckOptions()).RunAsync(Ct)).HasErrors);

        var index = await new IndexRepairer(repo).RunAsync(Ct);
        Assert.Equal((1, 0), (index.MissingPacksDropped, index.PacksDamaged));
        var repair = await new SnapshotRepairer(repo, new SnapshotRepairOptions { Forget = true }).RunAsync(Ct);

        var repaired = Assert.Single(repair.Repaired);
        Assert.Equal(backup.SnapshotId, repaired.Original);
        Assert.True(repaired.OriginalRemoved);
        Assert.All(repaired.Changes, c => Assert.Equal(SnapshotRepairKind.FileRemoved, c.Kind));
        var removed = repaired.Changes.Select(c => Path.GetRelativePath(s.Source, c.Path)).ToHashSet();
        Assert.Contains("files/size-4095", removed);

        var check = await new Checker(await TestRepository.ReopenAsync(s.Store), new CheckOptions { ReadData = true }).RunAsync(Ct);
        Assert.False(check.HasErrors, string.Join("\n", check.Problems.Select(p => $"{p.Object}: {p.Message}")));
        var (id, snapshot) = Assert.Single(await repo.LoadSnapshotsAsync(Ct));
        Assert.Equal(repaired.Repaired, id);
        Assert.Contains("repaired", snapshot.Tags);
        Assert.Equal(backup.SnapshotId.ToString(), snapshot.Original);

        var restored = await new Restorer(repo, new RestoreOptions { Target = s.Target }).RunAsync(snapshot.TreeId, Ct);
        Assert.Empty(restored.Errors);
        var differences = TestTree.Compare(s.Source, s.RestoredSource, Exact);
        Assert.Equal(removed.Select(p => $"{p}: missing").Order(StringComparer.Ordinal), differences.Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task Copy_ToARepositoryWithAnotherKey_RestoresIdentically_SendsNothingTwice_AndLaterOnlyWhatIsNew()
    {
        await using var s = new Scratch();
        TestTree.CreateHardCases(s.Source, includeLargeFile: false, seed: 12);
        var source = await TestRepository.CreateAsync(s.Store);
        var first = await Scratch.BackupAsync(source, new BackupOptions { Paths = [s.Source] });
        var destinationStore = new FaultyStore(new MemoryStore());
        var destination = await TestRepository.CreateAsync(destinationStore);
        await destination.LoadIndexAsync(Ct);

        var copy = await new Copier(source, destination).RunAsync(await source.LoadSnapshotsAsync(Ct), Ct);
        Assert.False(copy.SameIdKey);
        Assert.Equal((1, 0), (copy.SnapshotsCopied, copy.SnapshotsSkipped));

        destination = await TestRepository.ReopenAsync(destinationStore);
        var (copyId, copied) = Assert.Single(await destination.LoadSnapshotsAsync(Ct));
        Assert.Equal(first.SnapshotId.ToString(), copied.Original);
        Assert.Equal(first.Snapshot.Paths, copied.Paths);
        Assert.False((await new Checker(destination, new CheckOptions { ReadData = true }).RunAsync(Ct)).HasErrors);
        var restored = await new Restorer(destination, new RestoreOptions { Target = s.Target }).RunAsync(copied.TreeId, Ct);
        Assert.Empty(restored.Errors);
        var differences = TestTree.Compare(s.Source, s.RestoredSource, Exact);
        Assert.True(differences.Count == 0, string.Join("\n", differences.Take(30)));

        // Again: the copy is recognised, and not one byte is written.
        long before = destinationStore.BytesPut;
        var again = await new Copier(source, destination).RunAsync(await source.LoadSnapshotsAsync(Ct), Ct);
        Assert.Equal((0, 1), (again.SnapshotsCopied, again.SnapshotsSkipped));
        Assert.Equal(before, destinationStore.BytesPut);

        // A second backup with one new file: its copy sends that file and the trees above it, and reads little else.
        const int NewFileSize = 300_000;
        var newFile = new byte[NewFileSize];
        new Random(5).NextBytes(newFile);
        File.WriteAllBytes(Path.Combine(s.Source, "files", "new.bin"), newFile);
        var second = await Scratch.BackupAsync(source, new BackupOptions { Paths = [s.Source] });
        Assert.Equal(first.SnapshotId, second.ParentId);
        before = destinationStore.BytesPut;
        var incremental = await new Copier(source, destination).RunAsync(await source.LoadSnapshotsAsync(Ct), Ct);

        Assert.Equal((1, 1), (incremental.SnapshotsCopied, incremental.SnapshotsSkipped));
        Assert.InRange(incremental.BytesCopied, NewFileSize, NewFileSize + 100_000);
        Assert.InRange(destinationStore.BytesPut - before, NewFileSize, NewFileSize + 150_000);
        // Only new.bin's data is read: the ids of everything else are known from the copy of the parent.
        Assert.Equal(1L, incremental.DataBlobsRead);

        destination = await TestRepository.ReopenAsync(destinationStore);
        var latest = (await destination.LoadSnapshotsAsync(Ct))[^1];
        Assert.Equal(copyId.ToString(), latest.Snapshot.Parent);
        TestTree.DeleteTree(s.Target);
        Assert.Empty((await new Restorer(destination, new RestoreOptions { Target = s.Target }).RunAsync(latest.Snapshot.TreeId, Ct)).Errors);
        differences = TestTree.Compare(s.Source, s.RestoredSource, Exact);
        Assert.True(differences.Count == 0, string.Join("\n", differences.Take(30)));
    }

    [Fact]
    public async Task Diff_ListsExactlyTheChangedFiles_AndFind_LocatesFilesByGlob()
    {
        await using var s = new Scratch();
        TestTree.CreateHardCases(s.Source, includeLargeFile: false, seed: 13);
        var repo = await TestRepository.CreateAsync(s.Store, TestRepository.SmallChunks);
        var first = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        File.WriteAllText(Path.Combine(s.Source, "added.txt"), "new file");
        File.AppendAllText(Path.Combine(s.Source, "files", "one"), "one more line");
        File.Delete(Path.Combine(s.Source, "files", "empty"));
        PosixCalls.Chmod(PosixPath.FromString(Path.Combine(s.Source, "modes", "mode-0600")), 0x1A0); // 0640
        Directory.Delete(Path.Combine(s.Source, "empty-dir"));
        var second = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });

        var entries = new List<DiffEntry>();
        var totals = await new SnapshotDiff(repo).CompareAsync(first.Snapshot.TreeId, second.Snapshot.TreeId, entries.Add, Ct);

        // Directories above and around the changes get new mtimes (U); the files and the removed folder are exact.
        string Relative(string path) => Path.GetRelativePath(s.Source, path);
        var changed = entries.Where(e => e.Type != FileType.Directory || e.Kind != DiffKind.Metadata)
            .Select(e => $"{Kind(e.Kind)} {Relative(e.Path)}").Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(["+ added.txt", "- empty-dir", "- files/empty", "M files/one", "U modes/mode-0600"], changed);
        Assert.Equal((1L, 1L, 1L, 1L, (long)"new file".Length), (totals.FilesAdded, totals.FilesRemoved, totals.FilesModified, totals.DirectoriesRemoved, totals.BytesAdded));

        // Nothing differs between a snapshot and itself, and nothing is read for it.
        var none = new List<DiffEntry>();
        await new SnapshotDiff(repo).CompareAsync(second.Snapshot.TreeId, second.Snapshot.TreeId, none.Add, Ct);
        Assert.Empty(none);

        var found = new List<string>();
        var finder = new SnapshotFinder(repo, (components, node) => PathPattern.Glob("size-4*", components[^1]));
        await finder.FindAsync(second.Snapshot.TreeId, (path, node) => found.Add($"{Relative(path)} {node.Size}"), Ct);
        Assert.Equal(["files/size-4095 4095", "files/size-4096 4096"], found);

        var deep = new List<string>();
        await new SnapshotFinder(repo, (components, node) => components[^1] == "bottom.txt").FindAsync(second.Snapshot.TreeId, (path, _) => deep.Add(path), Ct);
        Assert.StartsWith(Path.Combine(s.Source, "deep", "level-01-"), Assert.Single(deep), StringComparison.Ordinal);
    }

    private static string Kind(DiffKind kind) => kind switch
    {
        DiffKind.Added => "+",
        DiffKind.Removed => "-",
        DiffKind.Modified => "M",
        _ => "U",
    };

    /// <summary>A repository with the smallest pack size (1 MiB), so a backup spreads over many packs.</summary>
    private static async Task<Haven.Repository.Repository> CreateWithSmallPacksAsync(IStore store)
    {
        await TestRepository.CreateAsync(store);
        var config = await Haven.Repository.Repository.ReadConfigAsync(store, Ct);
        await store.PutAsync(StoreHandle.Config, (config with { PackSize = 1024 * 1024 }).Serialize(), Ct);
        return await TestRepository.ReopenAsync(store);
    }
}
