using System.Security.Cryptography;
using Haven.Storage;
using Xunit;

namespace Haven.Storage.Tests;

/// <summary>
/// The store contract (<see cref="IStore"/>), as every implementation must keep it. Each implementation's test class
/// derives from this one and hands out a fresh, empty store per test (xunit makes a new instance per test).
/// A derived class may return null from <see cref="CreateStoreAsync"/> when its backend is not available here;
/// the tests then pass without doing anything (xunit 2 has no dynamic skip), and the class says so in its output.
/// </summary>
public abstract class StoreConformanceTests : IAsyncLifetime
{
    private IStore? _store;

    protected static CancellationToken None => CancellationToken.None;

    /// <summary>The store under test; only valid once <see cref="Available"/> returned true.</summary>
    protected IStore Store => _store ?? throw new InvalidOperationException("the store is not available");

    /// <summary>A fresh, empty store, or null when the backend is not available on this machine.</summary>
    protected abstract Task<IStore?> CreateStoreAsync();

    public async Task InitializeAsync() => _store = await CreateStoreAsync();

    public virtual async Task DisposeAsync()
    {
        if (_store is not null)
        {
            await _store.DisposeAsync();
        }
    }

    protected bool Available => _store is not null;

    public static StoreHandle NewHandle(FileKind kind) =>
        kind == FileKind.Config ? StoreHandle.Config : new StoreHandle(kind, Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)));

    public static byte[] RandomBytes(int count)
    {
        var bytes = new byte[count];
        Random.Shared.NextBytes(bytes);
        return bytes;
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(4097)]
    [InlineData(20 << 20)]
    public async Task PutThenGet_ReturnsTheSameBytes(int size)
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(size);

        await Store.PutAsync(handle, data, None);

        Assert.Equal(data, await Store.GetAsync(handle, None));
        Assert.Equal(new StoreFileInfo(handle, size), await Store.StatAsync(handle, None));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4097)]
    [InlineData(17 << 20)]
    public async Task PutFile_StoresTheFilesBytes_AndRepeatingItSucceeds(int size)
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(size);
        string folder = Directory.CreateTempSubdirectory("haven-putfile-").FullName;
        try
        {
            string path = Path.Combine(folder, "pack.tmp");
            await File.WriteAllBytesAsync(path, data);

            await Store.PutFileAsync(handle, path, None);
            // A retry after a success (the store may have moved the file away) must succeed and change nothing.
            await Store.PutFileAsync(handle, path, None);

            Assert.Equal(data, await Store.GetAsync(handle, None));
            Assert.Equal(new StoreFileInfo(handle, size), await Store.StatAsync(handle, None));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task PutFile_OfAMissingFile_FailsAndStoresNothing()
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        string missing = Path.Combine(Path.GetTempPath(), $"haven-missing-{Guid.NewGuid():N}");

        await Assert.ThrowsAnyAsync<Exception>(() => Store.PutFileAsync(handle, missing, None));

        Assert.Null(await Store.StatAsync(handle, None));
    }

    [Fact]
    public async Task Put_TakesTheBytesOfASliceOnly()
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Index);
        byte[] data = RandomBytes(1000);

        await Store.PutAsync(handle, data.AsMemory(100, 500), None);

        Assert.Equal(data[100..600], await Store.GetAsync(handle, None));
    }

    [Fact]
    public async Task Config_RoundTrips()
    {
        if (!Available) return;
        byte[] data = RandomBytes(300);

        await Store.PutAsync(StoreHandle.Config, data, None);

        Assert.Equal(data, await Store.GetAsync(StoreHandle.Config, None));
    }

    [Fact]
    public async Task Get_OfAMissingFile_FailsWithNotFound()
    {
        if (!Available) return;
        var e = await Assert.ThrowsAsync<StoreException>(() => Store.GetAsync(NewHandle(FileKind.Snapshot), None));
        Assert.Equal(StoreErrorKind.NotFound, e.Kind);
    }

    [Fact]
    public async Task Get_OfAMissingPack_FailsWithNotFound()
    {
        if (!Available) return;
        var e = await Assert.ThrowsAsync<StoreException>(() => Store.GetAsync(NewHandle(FileKind.Pack), None));
        Assert.Equal(StoreErrorKind.NotFound, e.Kind);
    }

    [Fact]
    public async Task Stat_OfAMissingFile_IsNull()
    {
        if (!Available) return;
        Assert.Null(await Store.StatAsync(NewHandle(FileKind.Key), None));
        Assert.Null(await Store.StatAsync(StoreHandle.Config, None));
    }

    [Fact]
    public async Task ReadRange_ReadsTheStartTheMiddleAndTheEnd()
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(100_000);
        await Store.PutAsync(handle, data, None);

        foreach (var (offset, count) in new[] { (0, 1), (0, 4096), (12_345, 54_321), (99_000, 1000), (99_999, 1), (0, 100_000) })
        {
            var buffer = new byte[count];
            await Store.ReadRangeAsync(handle, offset, buffer, None);
            Assert.Equal(data.AsSpan(offset, count).ToArray(), buffer);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(500)]
    [InlineData(1000)]
    public async Task ReadRange_OfZeroBytes_SucceedsUpToTheEnd(long offset)
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        await Store.PutAsync(handle, RandomBytes(1000), None);

        await Store.ReadRangeAsync(handle, offset, Memory<byte>.Empty, None);
    }

    [Theory]
    [InlineData(990, 11)]   // starts inside, ends past the end
    [InlineData(1000, 1)]   // starts at the end
    [InlineData(5000, 10)]  // starts past the end
    [InlineData(1001, 0)]   // empty, but past the end
    public async Task ReadRange_PastTheEnd_FailsPermanently(long offset, int count)
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        await Store.PutAsync(handle, RandomBytes(1000), None);

        var e = await Assert.ThrowsAsync<StoreException>(() => Store.ReadRangeAsync(handle, offset, new byte[count], None));
        Assert.Equal(StoreErrorKind.Permanent, e.Kind);
    }

    [Fact]
    public async Task ReadRange_OfAMissingFile_FailsWithNotFound()
    {
        if (!Available) return;
        var e = await Assert.ThrowsAsync<StoreException>(() => Store.ReadRangeAsync(NewHandle(FileKind.Pack), 0, new byte[10], None));
        Assert.Equal(StoreErrorKind.NotFound, e.Kind);
    }

    [Fact]
    public async Task List_ReturnsExactlyTheFilesOfEachKind()
    {
        if (!Available) return;
        var expected = new Dictionary<FileKind, HashSet<StoreFileInfo>>();
        foreach (var kind in Enum.GetValues<FileKind>())
        {
            expected[kind] = new HashSet<StoreFileInfo>();
            int count = kind switch { FileKind.Config => 1, FileKind.Pack => 12, _ => 3 };
            for (int i = 0; i < count; i++)
            {
                var handle = NewHandle(kind);
                int size = 10 + (i * 7);
                await Store.PutAsync(handle, RandomBytes(size), None);
                expected[kind].Add(new StoreFileInfo(handle, size));
            }
        }

        foreach (var kind in Enum.GetValues<FileKind>())
        {
            var listed = await ListAsync(kind);
            Assert.Equal(expected[kind].Count, listed.Count);
            Assert.Equal(expected[kind], listed.ToHashSet());
        }
    }

    [Fact]
    public async Task List_OfAKindWithNoFiles_IsEmpty()
    {
        if (!Available) return;
        foreach (var kind in Enum.GetValues<FileKind>())
        {
            Assert.Empty(await ListAsync(kind));
        }

        await Store.PutAsync(NewHandle(FileKind.Pack), RandomBytes(10), None);
        await Store.PutAsync(StoreHandle.Config, RandomBytes(10), None);

        Assert.Empty(await ListAsync(FileKind.Index));
        Assert.Empty(await ListAsync(FileKind.Lock));
    }

    [Fact]
    public async Task List_DoesNotShowDeletedFiles()
    {
        if (!Available) return;
        var kept = NewHandle(FileKind.Lock);
        var deleted = NewHandle(FileKind.Lock);
        await Store.PutAsync(kept, RandomBytes(5), None);
        await Store.PutAsync(deleted, RandomBytes(5), None);

        await Store.DeleteAsync(deleted, None);

        Assert.Equal([new StoreFileInfo(kept, 5)], await ListAsync(FileKind.Lock));
    }

    [Fact]
    public async Task Delete_ThenGet_FailsWithNotFound()
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Snapshot);
        await Store.PutAsync(handle, RandomBytes(64), None);

        await Store.DeleteAsync(handle, None);

        var e = await Assert.ThrowsAsync<StoreException>(() => Store.GetAsync(handle, None));
        Assert.Equal(StoreErrorKind.NotFound, e.Kind);
        Assert.Null(await Store.StatAsync(handle, None));
    }

    [Fact]
    public async Task Delete_OfAMissingFile_Succeeds()
    {
        if (!Available) return;
        await Store.DeleteAsync(NewHandle(FileKind.Pack), None);
        await Store.DeleteAsync(NewHandle(FileKind.Lock), None);
        await Store.DeleteAsync(StoreHandle.Config, None);

        var handle = NewHandle(FileKind.Index);
        await Store.PutAsync(handle, RandomBytes(3), None);
        await Store.DeleteAsync(handle, None);
        await Store.DeleteAsync(handle, None);
    }

    [Fact]
    public async Task Put_OfTheSameContentAgain_Succeeds()
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(5000);

        await Store.PutAsync(handle, data, None);
        await Store.PutAsync(handle, data, None);

        Assert.Equal(data, await Store.GetAsync(handle, None));
        Assert.Single(await ListAsync(FileKind.Pack));
    }

    [Fact]
    public async Task ConcurrentPutsAndGets_AllSeeTheirOwnBytes()
    {
        if (!Available) return;
        var files = Enumerable.Range(0, 32)
            .Select(i => (Handle: NewHandle(i % 2 == 0 ? FileKind.Pack : FileKind.Index), Data: RandomBytes(1000 + (i * 16_411))))
            .ToArray();

        await Task.WhenAll(files.Select(f => Task.Run(() => Store.PutAsync(f.Handle, f.Data, None))));
        var read = await Task.WhenAll(files.Select(f => Task.Run(() => Store.GetAsync(f.Handle, None))));

        for (int i = 0; i < files.Length; i++)
        {
            Assert.Equal(files[i].Data, read[i]);
        }

        Assert.Equal(16, (await ListAsync(FileKind.Pack)).Count);
        Assert.Equal(16, (await ListAsync(FileKind.Index)).Count);
    }

    [Fact]
    public async Task ConcurrentPutsOfOneFile_LeaveOneWholeCopy()
    {
        if (!Available) return;
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(256 * 1024);

        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() => Store.PutAsync(handle, data, None))));

        Assert.Equal(data, await Store.GetAsync(handle, None));
        Assert.Equal([new StoreFileInfo(handle, data.Length)], await ListAsync(FileKind.Pack));
    }

    [Theory]
    [InlineData("../x")]
    [InlineData("../../etc/passwd")]
    [InlineData("")]
    [InlineData("config")]
    [InlineData("ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789")] // upper case
    [InlineData("abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345678")]  // 63 digits
    [InlineData("abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345678/")]
    [InlineData(".bcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")]
    public async Task InvalidNames_AreRefused(string name)
    {
        if (!Available) return;
        foreach (var kind in new[] { FileKind.Pack, FileKind.Snapshot })
        {
            var handle = new StoreHandle(kind, name);
            await Assert.ThrowsAnyAsync<ArgumentException>(() => Store.PutAsync(handle, new byte[1], None));
            await Assert.ThrowsAnyAsync<ArgumentException>(() => Store.GetAsync(handle, None));
            await Assert.ThrowsAnyAsync<ArgumentException>(() => Store.ReadRangeAsync(handle, 0, new byte[1], None));
            await Assert.ThrowsAnyAsync<ArgumentException>(() => Store.StatAsync(handle, None));
            await Assert.ThrowsAnyAsync<ArgumentException>(() => Store.DeleteAsync(handle, None));
        }

        foreach (var kind in Enum.GetValues<FileKind>())
        {
            Assert.Empty(await ListAsync(kind));
        }
    }

    [Fact]
    public async Task TheConfigFile_MustBeNamedConfig()
    {
        if (!Available) return;
        var handle = new StoreHandle(FileKind.Config, NewHandle(FileKind.Key).Name);
        await Assert.ThrowsAnyAsync<ArgumentException>(() => Store.PutAsync(handle, new byte[1], None));
        await Assert.ThrowsAnyAsync<ArgumentException>(() => Store.GetAsync(handle, None));
    }

    [Fact]
    public void Location_IsSet()
    {
        if (!Available) return;
        Assert.False(string.IsNullOrWhiteSpace(Store.Location));
    }

    protected async Task<List<StoreFileInfo>> ListAsync(FileKind kind)
    {
        var result = new List<StoreFileInfo>();
        await foreach (var info in Store.ListAsync(kind, None))
        {
            result.Add(info);
        }

        return result;
    }
}
