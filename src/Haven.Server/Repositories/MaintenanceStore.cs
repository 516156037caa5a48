using Haven.Server.Database;
using Haven.Storage;

namespace Haven.Server.Repositories;

/// <summary>
/// A tenant's store as the server's own maintenance writes it: every file added or deleted is booked in the tenant's
/// usage, and a pack leaves the catalog before it leaves the store, as through the repository endpoints.
/// </summary>
internal sealed class MaintenanceStore(IStore inner, ManagementDb db, string tenantId) : IStore
{
    public string Location => inner.Location;

    public async Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await inner.PutAsync(handle, data, cancellationToken).ConfigureAwait(false);
        await BookAsync(handle, data.Length, cancellationToken).ConfigureAwait(false);
    }

    public async Task PutFileAsync(StoreHandle handle, string path, CancellationToken cancellationToken)
    {
        long length = new FileInfo(path).Length; // the store may move the file away
        await inner.PutFileAsync(handle, path, cancellationToken).ConfigureAwait(false);
        await BookAsync(handle, length, cancellationToken).ConfigureAwait(false);
    }

    public Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken) => inner.GetAsync(handle, cancellationToken);

    public Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken) => inner.ReadRangeAsync(handle, offset, buffer, cancellationToken);

    public IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, CancellationToken cancellationToken) => inner.ListAsync(kind, cancellationToken);

    public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken) => inner.StatAsync(handle, cancellationToken);

    public async Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        if (await inner.StatAsync(handle, cancellationToken).ConfigureAwait(false) is not { } info)
        {
            return;
        }

        if (handle.Kind == FileKind.Pack)
        {
            await TenantUsage.RemovePackAsync(db, tenantId, handle.Name, cancellationToken).ConfigureAwait(false);
        }

        await inner.DeleteAsync(handle, cancellationToken).ConfigureAwait(false);
        if (handle.Kind != FileKind.Lock)
        {
            await TenantUsage.RefundAsync(db, tenantId, info.Size).ConfigureAwait(false);
        }
    }

    // The inner store is the server's, shared by every request of the tenant: not this wrapper's to dispose.
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private Task BookAsync(StoreHandle handle, long bytes, CancellationToken ct) =>
        handle.Kind == FileKind.Lock ? Task.CompletedTask : TenantUsage.AddAsync(db, tenantId, bytes, ct);
}
