namespace Haven.Storage;

/// <summary>
/// Limits how fast a store is written to: puts wait until their bytes fit a budget of
/// <c>bytesPerSecond</c>, kept as a token bucket with one second of burst. Reads are not limited (restores should be
/// fast; a plan's bandwidth limit is about the client's uplink). Thread-safe; concurrent puts share the budget.
/// </summary>
public sealed class ThrottledStore(IStore inner, long bytesPerSecond, TimeProvider? time = null) : IStore
{
    private readonly TimeProvider _time = time ?? TimeProvider.System;
    private readonly Lock _lock = new();
    private double _tokens = bytesPerSecond;
    private long _last = (time ?? TimeProvider.System).GetTimestamp();

    public string Location => inner.Location;

    public IChunkCatalog? Catalog => inner.Catalog;

    /// <summary>Takes <paramref name="bytes"/> from the budget, waiting while it is in debt.</summary>
    private Task ThrottleAsync(long bytes, CancellationToken ct)
    {
        TimeSpan wait;
        lock (_lock)
        {
            long now = _time.GetTimestamp();
            _tokens = Math.Min(bytesPerSecond, _tokens + (_time.GetElapsedTime(_last, now).TotalSeconds * bytesPerSecond));
            _last = now;
            _tokens -= bytes;
            wait = _tokens >= 0 ? TimeSpan.Zero : TimeSpan.FromSeconds(-_tokens / bytesPerSecond);
        }

        return wait == TimeSpan.Zero ? Task.CompletedTask : Task.Delay(wait, _time, ct);
    }

    public async Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        await ThrottleAsync(data.Length, cancellationToken).ConfigureAwait(false);
        await inner.PutAsync(handle, data, cancellationToken).ConfigureAwait(false);
    }

    public async Task PutFileAsync(StoreHandle handle, string path, CancellationToken cancellationToken)
    {
        await ThrottleAsync(new FileInfo(path).Length, cancellationToken).ConfigureAwait(false);
        await inner.PutFileAsync(handle, path, cancellationToken).ConfigureAwait(false);
    }

    public Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken) => inner.GetAsync(handle, cancellationToken);

    public Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken) =>
        inner.ReadRangeAsync(handle, offset, buffer, cancellationToken);

    public IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, CancellationToken cancellationToken) => inner.ListAsync(kind, cancellationToken);

    public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken) => inner.StatAsync(handle, cancellationToken);

    public Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken) => inner.DeleteAsync(handle, cancellationToken);

    public ValueTask DisposeAsync() => inner.DisposeAsync();
}
