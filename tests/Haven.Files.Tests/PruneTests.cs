using System.Runtime.CompilerServices;
using Haven.Core;
using Haven.Files.Backup;
using Haven.Files.Restore;
using Haven.Repository;
using Haven.Repository.Maintenance;
using Haven.Storage;
using Haven.Testing;
using Xunit;
using PosixCalls = Haven.Core.Posix.Posix;

namespace Haven.Files.Tests;


public class PruneTests
{
    private static CancellationToken Ct => CancellationToken.None;

    private static readonly DateTimeOffset T0 = new(2024, 3, 1, 12, 0, 0, TimeSpan.Zero);

    private static async Task<PruneResult> PruneAsync(IStore store, PruneOptions options)
    {
        var repo = await Haven.Repository.Repository.OpenAsync(store, TestRepository.Password);
        await using var held = await RepositoryLock.AcquireAsync(repo, exclusive: true, "prune", TimeSpan.Zero, Ct);
        return await new Pruner(repo, options).RunAsync(held, Ct);
    }

    private static async Task<CheckResult> CheckAsync(IStore store) =>
        await new Checker(await TestRepository.ReopenAsync(store), new CheckOptions { ReadData = true }).RunAsync(Ct);

    private static async Task AssertRestoresAsync(IStore store, BackupResult backup, string source, string target)
    {
        var repo = await TestRepository.ReopenAsync(store);
        var result = await new Restorer(repo, new RestoreOptions { Target = target, Verify = true }).RunAsync(backup.Snapshot.TreeId, Ct);
        Assert.Empty(result.Errors);
        var differences = TestTree.Compare(source, target + source, new CompareOptions(Ownership: PosixCalls.IsRoot));
        Assert.True(differences.Count == 0, string.Join("\n", differences.Take(30)));
    }

    [Fact]
    public async Task ForgetAndPrune_RemoveWhatOnlyTheForgottenSnapshotHad_AndEverythingElseRestoresExactly()
    {
        await using var s = new Scratch();
        string cache = Path.Combine(s.Root, "cache");
        string x = s.Source;
        string y = Path.Combine(s.Root, "src-y");
        TestTree.CreateHardCases(x, includeLargeFile: false, seed: 11);
        TestTree.CreateHardCases(y, includeLargeFile: false, seed: 12);
        var common = new byte[700_000];
        new Random(13).NextBytes(common);
        File.WriteAllBytes(Path.Combine(x, "common.bin"), common);
        File.WriteAllBytes(Path.Combine(y, "common.bin"), common);
        var repo = await TestRepository.CreateAsync(s.Store);

        var first = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [x], Time = T0, CacheRoot = cache });
        var doomed = File.ReadAllBytes(Path.Combine(x, "files", "size-4095"));
        File.Delete(Path.Combine(x, "files", "size-4095"));
        File.AppendAllText(Path.Combine(x, "files", "one"), "more");
        File.WriteAllText(Path.Combine(x, "added.txt"), "added after the first backup");
        var second = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [x], Time = T0.AddDays(1), CacheRoot = cache });
        var third = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [y], Time = T0.AddDays(2), CacheRoot = cache });
        Assert.True(repo.Index.Contains(repo.Key.BlobId(doomed)));

        // forget --keep-last 1 (per host and paths): only the first backup of x goes.
        var groups = RetentionPolicy.Apply(await repo.LoadSnapshotsAsync(Ct), new RetentionPolicy { Last = 1 });
        Assert.Equal(2, groups.Count);
        var removed = Assert.Single(groups.SelectMany(g => g.Remove));
        Assert.Equal(first.SnapshotId, removed.Id);
        await s.Store.DeleteAsync(new StoreHandle(FileKind.Snapshot, removed.Id.ToString()), Ct);

        var result = await PruneAsync(s.Store, new PruneOptions { MaxUnused = UnusedLimit.FromPercent(0) });
        Assert.True(result.PacksDeleted > 0 && result.BlobsRemoved > 0, $"deleted {result.PacksDeleted} packs, {result.BlobsRemoved} blobs");
        Assert.True(result.PacksRepacked > 0, "the first backup's packs also hold data the second still uses");
        Assert.Equal(0, result.BytesStillUnused);

        var after = await TestRepository.ReopenAsync(s.Store);
        Assert.False(after.Index.Contains(after.Key.BlobId(doomed)));
        await AssertRestoresAsync(s.Store, second, x, Path.Combine(s.Root, "restore-x"));
        await AssertRestoresAsync(s.Store, third, y, Path.Combine(s.Root, "restore-y"));
        var check = await CheckAsync(s.Store);
        Assert.True(check.Problems.Count == 0, string.Join("\n", check.Problems.Select(p => $"{p.Object}: {p.Message}")));
        Assert.Equal(2, check.Snapshots);
    }

    [Fact]
    public async Task Prune_AfterAnInterruptedBackup_RemovesItsOrphanPacks_AndLaterBackupsStillWork()
    {
        await using var s = new Scratch();
        string cache = Path.Combine(s.Root, "cache");
        File.WriteAllText(Path.Combine(s.Source, "kept.txt"), "in the first backup");
        var repo = await TestRepository.CreateAsync(s.Store);
        var first = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source], Time = T0, CacheRoot = cache });

        var big = new byte[3_000_000];
        new Random(21).NextBytes(big);
        File.WriteAllBytes(Path.Combine(s.Source, "new.bin"), big);
        var refusing = new FaultyStore(s.Store);
        refusing.RefusePuts(h => h.Kind == FileKind.Index); // the backup dies after uploading its packs
        var dying = await Haven.Repository.Repository.OpenAsync(refusing, TestRepository.Password);
        await Assert.ThrowsAsync<StoreException>(() => Scratch.BackupAsync(dying, new BackupOptions { Paths = [s.Source], Time = T0.AddDays(1), CacheRoot = cache }));

        var before = await CheckAsync(s.Store);
        Assert.False(before.HasErrors);
        int orphans = before.Problems.Count(p => p.Message.Contains("not referenced by any index", StringComparison.Ordinal));
        Assert.True(orphans >= 1, "the interrupted backup left packs no index names");

        var result = await PruneAsync(s.Store, new PruneOptions());
        Assert.Equal(orphans, result.Plan.UnindexedPacks);
        Assert.Equal(orphans, result.PacksDeleted);
        Assert.True(result.BytesFreed >= big.Length / 2, $"freed {result.BytesFreed}");
        var check = await CheckAsync(s.Store);
        Assert.True(check.Problems.Count == 0, string.Join("\n", check.Problems.Select(p => $"{p.Object}: {p.Message}")));
        var firstTarget = Path.Combine(s.Root, "restore-first");
        var restored = await new Restorer(await TestRepository.ReopenAsync(s.Store), new RestoreOptions { Target = firstTarget, Verify = true }).RunAsync(first.Snapshot.TreeId, Ct);
        Assert.Empty(restored.Errors);
        Assert.Equal("in the first backup", File.ReadAllText(Path.Combine(firstTarget + s.Source, "kept.txt")));
        Assert.False(File.Exists(Path.Combine(firstTarget + s.Source, "new.bin")));

        var again = await TestRepository.ReopenAsync(s.Store);
        var next = await Scratch.BackupAsync(again, new BackupOptions { Paths = [s.Source], Time = T0.AddDays(2), CacheRoot = cache });
        Assert.NotNull(next.SnapshotId);
        await AssertRestoresAsync(s.Store, next, s.Source, Path.Combine(s.Root, "restore-next"));
        Assert.False((await CheckAsync(s.Store)).HasErrors);
    }
}
