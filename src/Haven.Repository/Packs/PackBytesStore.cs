using Haven.Storage;

namespace Haven.Repository.Packs;

/// <summary>A read-only store over one pack already in memory, so pack parsing can run on downloaded bytes.</summary>
internal sealed class PackBytesStore(byte[] bytes) : IStore, IDisposable
{
    public string Location => "memory";

    public Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) => throw new NotSupportedException();

    public Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken) => Task.FromResult(bytes);

    public Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (offset < 0 || offset + buffer.Length > bytes.Length)
        {
            throw new StoreException(StoreErrorKind.Permanent, "range past the end");
        }

        bytes.AsMemory((int)offset, buffer.Length).CopyTo(buffer);
        return Task.CompletedTask;
    }

    public async IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Task.CompletedTask.ConfigureAwait(false);
        yield break;
    }

    public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken) => Task.FromResult<StoreFileInfo?>(new StoreFileInfo(handle, bytes.Length));

    public Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken) => throw new NotSupportedException();

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    public void Dispose()
    {
    }
}
