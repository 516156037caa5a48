using Haven.Testing;
using Xunit;

namespace Haven.Storage.Tests;

public sealed class MemoryStoreTests : StoreConformanceTests
{
    protected override Task<IStore?> CreateStoreAsync() => Task.FromResult<IStore?>(new MemoryStore());

    [Fact]
    public async Task Get_ReturnsACopy_SoCallersCannotChangeWhatIsStored()
    {
        var store = new MemoryStore();
        var handle = NewHandle(FileKind.Pack);
        byte[] data = [1, 2, 3];
        await store.PutAsync(handle, data, None);
        data[0] = 9;

        byte[] read = await store.GetAsync(handle, None);
        read[1] = 9;

        Assert.Equal([1, 2, 3], await store.GetAsync(handle, None));
    }

    [Fact]
    public async Task PeekAndPoke_BypassTheContract()
    {
        var store = new MemoryStore();
        var handle = NewHandle(FileKind.Index);
        await store.PutAsync(handle, new byte[] { 1, 2 }, None);

        store.Poke(handle, [7]);

        Assert.Equal([7], store.Peek(handle));
        Assert.Equal(1, store.Count);
        Assert.Equal(1, store.TotalBytes);
        Assert.Null(store.Peek(NewHandle(FileKind.Index)));
    }
}
