using Haven.Testing;
using Xunit;

namespace Haven.Storage.Tests;

/// <summary>The fault-injecting wrapper keeps the contract when told nothing, and does what it is told otherwise.</summary>
public sealed class FaultyStoreTests : StoreConformanceTests
{
    protected override Task<IStore?> CreateStoreAsync() => Task.FromResult<IStore?>(new FaultyStore(new MemoryStore()));

    [Theory]
    [InlineData(StoreErrorKind.Transient)]
    [InlineData(StoreErrorKind.NoSpace)]
    [InlineData(StoreErrorKind.AccessDenied)]
    public async Task FailNext_FailsExactlyThatManyCallsOfThatOperation(StoreErrorKind kind)
    {
        var memory = new MemoryStore();
        var store = new FaultyStore(memory);
        var handle = NewHandle(FileKind.Pack);
        store.FailNext(StoreOperation.Put, 2, kind);

        for (int i = 0; i < 2; i++)
        {
            var e = await Assert.ThrowsAsync<StoreException>(() => store.PutAsync(handle, new byte[10], None));
            Assert.Equal(kind, e.Kind);
            Assert.Equal(0, memory.Count); // a failed put stores nothing
        }

        await store.PutAsync(handle, new byte[10], None);
        Assert.NotNull(await store.StatAsync(handle, None));
        Assert.Equal(3, store.CallCount(StoreOperation.Put));
        Assert.Equal(1, store.CallCount(StoreOperation.Stat));
        Assert.Equal(0, store.CallCount(StoreOperation.Get));
    }

    [Fact]
    public async Task FailPutsAfterBytes_ActsLikeAFullDisk()
    {
        var memory = new MemoryStore();
        var store = new FaultyStore(memory);
        store.FailPutsAfterBytes(250);
        var first = NewHandle(FileKind.Pack);
        var second = NewHandle(FileKind.Pack);

        await store.PutAsync(first, new byte[200], None);
        var e = await Assert.ThrowsAsync<StoreException>(() => store.PutAsync(second, new byte[100], None));
        await store.PutAsync(NewHandle(FileKind.Lock), new byte[50], None);

        Assert.Equal(StoreErrorKind.NoSpace, e.Kind);
        Assert.Null(memory.Peek(second));
        Assert.Equal(250, store.BytesPut);

        store.FailPutsAfterBytes(null);
        await store.PutAsync(second, new byte[100], None);
    }

    [Fact]
    public async Task CorruptReads_FlipsOneBitInWhatIsRead_NotInWhatIsStored()
    {
        var memory = new MemoryStore();
        var store = new FaultyStore(memory);
        var handle = NewHandle(FileKind.Pack);
        byte[] data = RandomBytes(100);
        await store.PutAsync(handle, data, None);

        store.CorruptReads(handle, fileOffset: 40);
        byte[] whole = await store.GetAsync(handle, None);
        var covering = new byte[20];
        await store.ReadRangeAsync(handle, 30, covering, None);
        var elsewhere = new byte[20];
        await store.ReadRangeAsync(handle, 50, elsewhere, None);

        Assert.Equal(data[40] ^ 1, whole[40]);
        Assert.Equal(data[..40], whole[..40]);
        Assert.Equal(data[41..], whole[41..]);
        Assert.Equal(data[40] ^ 1, covering[10]);
        Assert.Equal(data[50..70], elsewhere);
        Assert.Equal(data, memory.Peek(handle));

        store.StopCorrupting(handle);
        Assert.Equal(data, await store.GetAsync(handle, None));
    }

    [Fact]
    public async Task FailListingAfter_FailsMidway()
    {
        var store = new FaultyStore(new MemoryStore());
        for (int i = 0; i < 5; i++)
        {
            await store.PutAsync(NewHandle(FileKind.Snapshot), new byte[1], None);
        }

        store.FailListingAfter(3);
        int seen = 0;
        var e = await Assert.ThrowsAsync<StoreException>(async () =>
        {
            await foreach (var _ in store.ListAsync(FileKind.Snapshot, None))
            {
                seen++;
            }
        });

        Assert.Equal(3, seen);
        Assert.Equal(StoreErrorKind.Transient, e.Kind);
        Assert.Equal(5, (await ToListAsync(store.ListAsync(FileKind.Snapshot, None))).Count); // once only
    }

    private static async Task<List<T>> ToListAsync<T>(IAsyncEnumerable<T> items)
    {
        var list = new List<T>();
        await foreach (var item in items)
        {
            list.Add(item);
        }

        return list;
    }
}
