using System.Text;
using Haven.Core;
using Haven.Repository.Model;
using Haven.Storage;
using Haven.Testing;
using Xunit;

namespace Haven.Repository.Tests;

public class RepositoryTests
{
    private static CancellationToken Ct => CancellationToken.None;

    [Fact]
    public async Task Open_WithTheWrongPassword_FailsWithWrongPassword()
    {
        var store = new MemoryStore();
        await TestRepository.CreateAsync(store);
        var e = await Assert.ThrowsAsync<HavenException>(() => Repository.OpenAsync(store, "not it"));
        Assert.Equal(ErrorCode.WrongPassword, e.Code);
    }

    [Fact]
    public async Task Open_OfAMissingRepository_FailsWithRepositoryNotFound()
    {
        var e = await Assert.ThrowsAsync<HavenException>(() => Repository.OpenAsync(new MemoryStore(), "x"));
        Assert.Equal(ErrorCode.RepositoryNotFound, e.Code);
    }

    [Fact]
    public async Task Init_Twice_FailsWithRepositoryExists()
    {
        var store = new MemoryStore();
        await TestRepository.CreateAsync(store);
        var e = await Assert.ThrowsAsync<HavenException>(() => TestRepository.CreateAsync(store));
        Assert.Equal(ErrorCode.RepositoryExists, e.Code);
    }

    [Fact]
    public async Task Open_OfANewerFormat_IsRefusedBeforeThePassword()
    {
        var store = new MemoryStore();
        await TestRepository.CreateAsync(store);
        var config = Encoding.UTF8.GetString(store.Peek(StoreHandle.Config)!).Replace("\"version\":1", "\"version\":2", StringComparison.Ordinal);
        store.Poke(StoreHandle.Config, Encoding.UTF8.GetBytes(config));
        var e = await Assert.ThrowsAsync<HavenException>(() => Repository.OpenAsync(store, "wrong password too"));
        Assert.Equal(ErrorCode.UnsupportedFormat, e.Code);
        Assert.Contains("version 2", e.Message);
    }

    [Fact]
    public async Task DamagedConfig_IsNamed()
    {
        var store = new MemoryStore();
        await TestRepository.CreateAsync(store);
        store.Poke(StoreHandle.Config, "{not json"u8);
        var e = await Assert.ThrowsAsync<HavenException>(() => Repository.OpenAsync(store, TestRepository.Password));
        Assert.Equal(ErrorCode.Corrupt, e.Code);
        Assert.Contains("config", e.Message);
    }

    [Fact]
    public async Task AddedKeys_OpenTheSameRepository()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        await repo.AddKeyAsync("second", Crypto.KdfParameters.ForTests(), Ct);
        var other = await Repository.OpenAsync(store, "second");
        Assert.Equal(repo.Key.IdKey, other.Key.IdKey);
        Assert.NotEqual(repo.KeyId, other.KeyId);
    }

    [Fact]
    public async Task Blobs_WrittenByOneProcess_AreReadByAnother()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var writer = new BlobWriter(repo);
        var blobs = Enumerable.Range(0, 50).Select(i => Encoding.UTF8.GetBytes($"blob number {i} " + new string('x', i * 100))).ToList();
        var ids = new List<ObjectId>();
        foreach (var b in blobs)
        {
            var id = repo.Key.BlobId(b);
            ids.Add(id);
            Assert.True(await writer.SaveAsync(BlobType.Data, id, b, Ct));
            Assert.False(await writer.SaveAsync(BlobType.Data, id, b, Ct));
        }

        await writer.FlushAsync(Ct);
        var again = await TestRepository.ReopenAsync(store);
        Assert.Equal(50, again.Index.Count);
        for (int i = 0; i < blobs.Count; i++)
        {
            Assert.Equal(blobs[i], await again.ReadBlobAsync(ids[i], Ct));
        }
    }

    [Fact]
    public async Task Snapshots_RoundTripAndAreFoundByPrefix()
    {
        var repo = await TestRepository.CreateAsync();
        var snapshot = new Snapshot { Tree = new string('0', 64), Paths = ["/a"], Hostname = "h", Tags = ["t"], Time = DateTimeOffset.UnixEpoch };
        var id = await repo.SaveSnapshotAsync(snapshot, Ct);
        var (found, loaded) = await repo.FindSnapshotAsync(id.ToString()[..6], null, Ct);
        Assert.Equal(id, found);
        Assert.Equal(["/a"], loaded.Paths);
        Assert.Equal((id, "h"), ((await repo.FindSnapshotAsync("latest", new SnapshotFilter(Hosts: ["h"]), Ct)).Id, loaded.Hostname));
        var e = await Assert.ThrowsAsync<HavenException>(() => repo.FindSnapshotAsync("latest", new SnapshotFilter(Hosts: ["other"]), Ct));
        Assert.Equal(ErrorCode.NotFound, e.Code);
    }

    [Fact]
    public async Task ExclusiveLock_ConflictsWithASharedOne_AndNamesTheHolder()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        await using (await RepositoryLock.AcquireAsync(repo, false, "backup", TimeSpan.Zero, Ct))
        {
            await using (await RepositoryLock.AcquireAsync(repo, false, "another backup", TimeSpan.Zero, Ct))
            {
            }

            // Locks of this very process are not stale, so the conflict is real.
            var e = await Assert.ThrowsAsync<HavenException>(() => RepositoryLock.AcquireAsync(repo, true, "prune", TimeSpan.Zero, Ct));
            Assert.Equal(ErrorCode.LockConflict, e.Code);
            Assert.Contains("backup", e.Message);
        }

        await using (await RepositoryLock.AcquireAsync(repo, true, "prune", TimeSpan.Zero, Ct))
        {
        }

        Assert.DoesNotContain(store.Handles, h => h.Kind == FileKind.Lock);
    }

    [Fact]
    public async Task LocksOfDeadHolders_AreStaleAndIgnored()
    {
        var store = new MemoryStore();
        var repo = await TestRepository.CreateAsync(store);
        var old = new LockInfo { Exclusive = true, Hostname = "elsewhere", Pid = 1, Purpose = "crashed prune", Time = DateTimeOffset.UtcNow.AddHours(-1) };
        await repo.SaveSealedAsync(FileKind.Lock, System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(old, RepositoryJson.Default.LockInfo), Ct);
        await using (await RepositoryLock.AcquireAsync(repo, true, "new prune", TimeSpan.Zero, Ct))
        {
        }

        Assert.Equal(1, await RepositoryLock.RemoveAsync(repo, all: false, Ct));
        Assert.DoesNotContain(store.Handles, h => h.Kind == FileKind.Lock);
    }

    [Fact]
    public async Task HeldLocks_AreRefreshedSoTheyNeverGoStale()
    {
        var time = new ManualTimeProvider(DateTimeOffset.UtcNow);
        var repo = await TestRepository.CreateAsync(time: time);
        await using var held = await RepositoryLock.AcquireAsync(repo, true, "long prune", TimeSpan.Zero, Ct);
        time.Advance(TimeSpan.FromHours(1));
        // The refresh runs on the timer's continuation: wait (in real time) until the rewritten lock is visible.
        for (int i = 0; i < 200; i++)
        {
            var locks = await RepositoryLock.ListLocksAsync(repo, Ct);
            if (locks.Count == 1 && time.GetUtcNow() - locks[0].Info.Time < TimeSpan.FromMinutes(1))
            {
                break;
            }

            await Task.Delay(50);
        }

        var e = await Assert.ThrowsAsync<HavenException>(() => RepositoryLock.AcquireAsync(repo, false, "backup", TimeSpan.Zero, Ct));
        Assert.Equal(ErrorCode.LockConflict, e.Code);
    }

    [Fact]
    public async Task AFailedLockRefresh_IsRetriedAtTheNextInterval()
    {
        var time = new ManualTimeProvider(DateTimeOffset.UtcNow);
        var faulty = new FaultyStore(new MemoryStore());
        var repo = await TestRepository.CreateAsync(faulty, time: time);
        await using var held = await RepositoryLock.AcquireAsync(repo, true, "long prune", TimeSpan.Zero, Ct);
        faulty.FailNext(StoreOperation.Put, 1, StoreErrorKind.Transient);
        time.Advance(RepositoryLock.RefreshInterval); // this refresh fails
        await Task.Delay(100);
        for (int i = 0; i < 5; i++)
        {
            time.Advance(RepositoryLock.RefreshInterval); // these must still happen
            await Task.Delay(100);
        }

        for (int i = 0; i < 200; i++)
        {
            var locks = await RepositoryLock.ListLocksAsync(repo, Ct);
            if (locks.Count == 1 && time.GetUtcNow() - locks[0].Info.Time < TimeSpan.FromMinutes(1))
            {
                break;
            }

            await Task.Delay(50);
        }

        held.EnsureValid();
    }
}
