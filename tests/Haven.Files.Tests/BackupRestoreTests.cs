using Haven.Core;
using Haven.Core.Posix;
using Haven.Files.Backup;
using Haven.Files.Filters;
using Haven.Files.Restore;
using Haven.Testing;
using Xunit;
using PosixCalls = Haven.Core.Posix.Posix;

namespace Haven.Files.Tests;

public class BackupRestoreTests
{
    [Fact]
    public async Task RoundTrip_OfTheHardCases_RestoresEveryEntryExactly()
    {
        await using var s = new Scratch();
        TestTree.CreateHardCases(s.Source, includeLargeFile: true, seed: 1);
        var repo = await TestRepository.CreateAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        Assert.NotNull(backup.SnapshotId);
        Assert.Equal(0, backup.ErrorCount);

        var again = await TestRepository.ReopenAsync(s.Store);
        var restored = await s.RestoreAsync(again, backup, new RestoreOptions { Target = s.Target, Verify = true });
        Assert.Empty(restored.Errors);
        Assert.Equal(restored.Files, restored.Verified);
        var differences = TestTree.Compare(s.Source, s.RestoredSource, new CompareOptions(Ownership: PosixCalls.IsRoot));
        Assert.True(differences.Count == 0, string.Join("\n", differences.Take(30)));
    }

    [Fact]
    public async Task RoundTrip_WithSmallChunks_KeepsHolesWhereverChunkBoundariesFall()
    {
        await using var s = new Scratch();
        TestTree.CreateHardCases(s.Source, includeLargeFile: false, seed: 3);
        var repo = await TestRepository.CreateAsync(s.Store, TestRepository.SmallChunks);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        var restored = await s.RestoreAsync(repo, backup);
        Assert.Empty(restored.Errors);
        var differences = TestTree.Compare(s.Source, s.RestoredSource, new CompareOptions(Ownership: PosixCalls.IsRoot));
        Assert.True(differences.Count == 0, string.Join("\n", differences.Take(30)));
    }

    [Fact]
    public async Task SecondBackup_ReadsOnlyWhatChanged_AndCountsAddedModifiedRemoved()
    {
        await using var s = new Scratch();
        TestTree.CreateHardCases(s.Source, includeLargeFile: false, seed: 2);
        var repo = await TestRepository.CreateAsync(s.Store, TestRepository.SmallChunks);
        var first = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });

        var unchanged = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        Assert.Equal(first.SnapshotId, unchanged.ParentId);
        Assert.Equal(0, unchanged.Snapshot.Summary!.FilesNew + unchanged.Snapshot.Summary.FilesChanged);
        Assert.Equal(0, unchanged.Snapshot.Summary.DataBlobs);
        Assert.Equal(first.Snapshot.Summary!.FilesNew, unchanged.Snapshot.Summary.FilesUnmodified);
        // Only directories above the source (e.g. /tmp, touched by other processes) may get new trees.
        Assert.True(unchanged.Snapshot.Summary.TreeBlobs <= 3, $"{unchanged.Snapshot.Summary.TreeBlobs} new trees");

        File.WriteAllText(Path.Combine(s.Source, "added.txt"), "new file");
        File.AppendAllText(Path.Combine(s.Source, "files", "one"), "one more line");
        File.Delete(Path.Combine(s.Source, "files", "empty"));
        var third = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        var sum = third.Snapshot.Summary!;
        Assert.Equal((1L, 1L, 1L), (sum.FilesNew, sum.FilesChanged, sum.FilesRemoved));
        Assert.InRange(sum.DataAdded, 1, 200_000);
    }

    [Fact]
    public async Task Excludes_LeaveOutWhatTheyMatch()
    {
        await using var s = new Scratch();
        Directory.CreateDirectory(Path.Combine(s.Source, "keep"));
        Directory.CreateDirectory(Path.Combine(s.Source, "cache"));
        Directory.CreateDirectory(Path.Combine(s.Source, "marked"));
        Directory.CreateDirectory(Path.Combine(s.Source, "Build"));
        File.WriteAllText(Path.Combine(s.Source, "keep", "a.txt"), "a");
        File.WriteAllText(Path.Combine(s.Source, "keep", "b.tmp"), "b");
        File.WriteAllText(Path.Combine(s.Source, "keep", "big.bin"), new string('x', 5000));
        File.WriteAllText(Path.Combine(s.Source, "cache", "CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n");
        File.WriteAllText(Path.Combine(s.Source, "cache", "c.dat"), "c");
        File.WriteAllText(Path.Combine(s.Source, "marked", ".nobackup"), "");
        File.WriteAllText(Path.Combine(s.Source, "Build", "out.o"), "o");
        var excludes = new PatternSet();
        excludes.Add("*.tmp", ignoreCase: false);
        excludes.Add("build", ignoreCase: true);
        var repo = await TestRepository.CreateAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions
        {
            Paths = [s.Source], Excludes = excludes, ExcludeCaches = true, ExcludeIfPresent = [".nobackup"], ExcludeLargerThan = 1000,
        });
        await s.RestoreAsync(repo, backup);
        var restored = Directory.GetFileSystemEntries(s.RestoredSource, "*", SearchOption.AllDirectories).Select(p => Path.GetRelativePath(s.RestoredSource, p)).Order().ToArray();
        Assert.Equal(["keep", "keep/a.txt"], restored);
    }

    [Fact]
    public async Task Backup_OfAMissingPath_FailsWithSourceNotFound()
    {
        await using var s = new Scratch();
        var repo = await TestRepository.CreateAsync(s.Store);
        var e = await Assert.ThrowsAsync<HavenException>(() => Scratch.BackupAsync(repo, new BackupOptions { Paths = [Path.Combine(s.Root, "nope")] }));
        Assert.Equal(ErrorCode.SourceNotFound, e.Code);
        Assert.Contains("nope", e.Message);
    }

    [Fact]
    public async Task DryRun_StoresNothing()
    {
        await using var s = new Scratch();
        File.WriteAllText(Path.Combine(s.Source, "f"), "content");
        var repo = await TestRepository.CreateAsync(s.Store);
        var before = Directory.GetFiles(Path.Combine(s.Root, "repo"), "*", SearchOption.AllDirectories).Length;
        var result = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source], DryRun = true });
        Assert.Null(result.SnapshotId);
        Assert.Equal(7, result.Snapshot.Summary!.DataAdded);
        Assert.Equal(before, Directory.GetFiles(Path.Combine(s.Root, "repo"), "*", SearchOption.AllDirectories).Length);
    }

    [Fact]
    public async Task Restore_RefusesToWriteThroughASymlinkedParent()
    {
        await using var s = new Scratch();
        Directory.CreateDirectory(Path.Combine(s.Source, "dir"));
        File.WriteAllText(Path.Combine(s.Source, "dir", "f"), "payload");
        var repo = await TestRepository.CreateAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });

        // Someone planted a symlink where the snapshot has a directory.
        var outside = Path.Combine(s.Root, "outside");
        Directory.CreateDirectory(outside);
        Directory.CreateDirectory(s.RestoredSource);
        File.CreateSymbolicLink(Path.Combine(s.RestoredSource, "dir"), outside);
        var result = await s.RestoreAsync(repo, backup);
        Assert.Contains(result.Errors, e => e.Contains("symlink", StringComparison.Ordinal));
        Assert.Empty(Directory.GetFileSystemEntries(outside));
    }

    [Fact]
    public async Task Restore_RunAgain_SkipsFilesAlreadyRestored()
    {
        await using var s = new Scratch();
        for (int i = 0; i < 20; i++)
        {
            File.WriteAllText(Path.Combine(s.Source, $"f{i}"), new string((char)('a' + i), 1000 * i));
        }

        var repo = await TestRepository.CreateAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        await s.RestoreAsync(repo, backup);
        File.WriteAllText(Path.Combine(s.RestoredSource, "f5"), "half-written");
        File.Delete(Path.Combine(s.RestoredSource, "f6"));
        var second = await s.RestoreAsync(repo, backup);
        Assert.Equal(18, second.FilesSkipped);
        Assert.Empty(TestTree.Compare(s.Source, s.RestoredSource, new CompareOptions()));
    }

    [Fact]
    public async Task Restore_WithIncludeAndExclude_RestoresOnlyTheSelection()
    {
        await using var s = new Scratch();
        Directory.CreateDirectory(Path.Combine(s.Source, "docs", "old"));
        Directory.CreateDirectory(Path.Combine(s.Source, "music"));
        File.WriteAllText(Path.Combine(s.Source, "docs", "a.txt"), "a");
        File.WriteAllText(Path.Combine(s.Source, "docs", "old", "b.txt"), "b");
        File.WriteAllText(Path.Combine(s.Source, "music", "c.mp3"), "c");
        var repo = await TestRepository.CreateAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        var includes = new PatternSet();
        includes.Add("docs", false);
        var excludes = new PatternSet();
        excludes.Add("old", false);
        await s.RestoreAsync(repo, backup, new RestoreOptions { Target = s.Target, Includes = includes, Excludes = excludes });
        var restored = Directory.GetFileSystemEntries(s.RestoredSource, "*", SearchOption.AllDirectories).Select(p => Path.GetRelativePath(s.RestoredSource, p)).Order().ToArray();
        Assert.Equal(["docs", "docs/a.txt"], restored);
    }

    [Fact]
    public async Task Restore_OfADamagedBlob_NamesThePackAndRestoresTheRest()
    {
        await using var s = new Scratch();
        File.WriteAllText(Path.Combine(s.Source, "good"), new string('g', 100));
        var repo = await TestRepository.CreateAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        File.WriteAllText(Path.Combine(s.Source, "bad"), new string('b', 100));
        var second = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        // Flip a byte in the data pack written by the second backup only.
        var packs = Directory.GetFiles(Path.Combine(s.Root, "repo", "data"), "*", SearchOption.AllDirectories);
        await repo.LoadIndexAsync(CancellationToken.None);
        Assert.True(repo.TryLocate(repo.Key.BlobId(System.Text.Encoding.ASCII.GetBytes(new string('b', 100))), out var location));
        var pack = packs.Single(p => Path.GetFileName(p) == location.Pack.ToString());
        var bytes = File.ReadAllBytes(pack);
        bytes[location.Blob.Offset + 20] ^= 0x40;
        File.WriteAllBytes(pack, bytes);

        var result = await s.RestoreAsync(repo, second);
        var error = Assert.Single(result.Errors);
        Assert.Contains("bad", error);
        Assert.Contains(location.Pack.ToString(), error);
        Assert.Equal(new string('g', 100), File.ReadAllText(Path.Combine(s.RestoredSource, "good")));
    }

    [Fact]
    public async Task Backup_IntoAStoreThatFillsUp_FailsPromptlyWithTheStoreError()
    {
        await using var s = new Scratch();
        var rng = new Random(9);
        for (int i = 0; i < 40; i++)
        {
            var data = new byte[1 << 20];
            rng.NextBytes(data);
            File.WriteAllBytes(Path.Combine(s.Source, $"f{i}"), data);
        }

        var faulty = new FaultyStore(new MemoryStore());
        var repo = await TestRepository.CreateAsync(faulty);
        faulty.FailPutsAfterBytes(20 << 20);
        var backup = Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source], EncodeConcurrency = 1, ReadConcurrency = 2 });
        var finished = await Task.WhenAny(backup, Task.Delay(TimeSpan.FromSeconds(60)));
        Assert.Same(backup, finished);
        var e = await Assert.ThrowsAsync<Haven.Storage.StoreException>(() => backup);
        Assert.Equal(Haven.Storage.StoreErrorKind.NoSpace, e.Kind);
        Assert.Empty(await repo.ListAsync(Haven.Storage.FileKind.Snapshot, CancellationToken.None));
    }

    [Fact]
    public async Task Backup_WhoseUploadsFail_ReportsTheStoreErrorAndLeavesNoSnapshot()
    {
        await using var s = new Scratch();
        TestTree.CreateHardCases(s.Source, includeLargeFile: false, seed: 13);
        var faulty = new FaultyStore(new MemoryStore());
        var repo = await TestRepository.CreateAsync(faulty, TestRepository.SmallChunks);
        faulty.RefusePuts(h => h.Kind == Haven.Storage.FileKind.Pack);
        var backup = Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });
        Assert.Same(backup, await Task.WhenAny(backup, Task.Delay(TimeSpan.FromSeconds(60))));
        var e = await Assert.ThrowsAsync<Haven.Storage.StoreException>(() => backup);
        Assert.Equal(Haven.Storage.StoreErrorKind.Permanent, e.Kind);
        Assert.Empty(await repo.ListAsync(Haven.Storage.FileKind.Snapshot, CancellationToken.None));
    }

    [Fact]
    public async Task Restore_NeverWritesThroughAHardLinkAlreadyInTheTarget()
    {
        await using var s = new Scratch();
        File.WriteAllText(Path.Combine(s.Source, "a"), "content of a");
        File.WriteAllText(Path.Combine(s.Source, "b"), "content of b");
        var repo = await TestRepository.CreateAsync(s.Store);
        var backup = await Scratch.BackupAsync(repo, new BackupOptions { Paths = [s.Source] });

        // The target already holds a and b as hard links of a file outside it.
        var outside = Path.Combine(s.Root, "outside.txt");
        File.WriteAllText(outside, "must stay as it is");
        Directory.CreateDirectory(s.RestoredSource);
        PosixCalls.Link(PosixPath.FromString(outside), PosixPath.FromString(Path.Combine(s.RestoredSource, "a")));
        PosixCalls.Link(PosixPath.FromString(outside), PosixPath.FromString(Path.Combine(s.RestoredSource, "b")));

        var result = await s.RestoreAsync(repo, backup);
        Assert.Empty(result.Errors);
        Assert.Equal("must stay as it is", File.ReadAllText(outside));
        Assert.Equal("content of a", File.ReadAllText(Path.Combine(s.RestoredSource, "a")));
        Assert.Equal("content of b", File.ReadAllText(Path.Combine(s.RestoredSource, "b")));
    }

    [Fact]
    public async Task BeforeCommit_CanStopTheSnapshotFromBeingWritten()
    {
        await using var s = new Scratch();
        File.WriteAllText(Path.Combine(s.Source, "f"), "data");
        var repo = await TestRepository.CreateAsync(s.Store);
        await Assert.ThrowsAsync<HavenException>(() => Scratch.BackupAsync(repo, new BackupOptions
        {
            Paths = [s.Source],
            BeforeCommit = () => throw new HavenException(ErrorCode.LockConflict, "lock expired"),
        }));
        Assert.Empty(await repo.ListAsync(Haven.Storage.FileKind.Snapshot, CancellationToken.None));
    }
}
