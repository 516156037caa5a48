using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Threading;
using Haven.Storage;

namespace Haven.Testing;

/// <summary>
/// A store in a dictionary, for unit tests of the layers above storage. It keeps the whole contract (atomic puts,
/// NotFound errors, idempotent deletes, range checks, name validation) so tests against it mean something.
/// Stored bytes are copied in and out: callers can neither change what is stored nor see later changes.
/// Thread-safe.
/// </summary>
public sealed class MemoryStore : IStore
{
    private static int s_instances;

    private readonly ConcurrentDictionary<StoreHandle, byte[]> _files = new();

    public MemoryStore(string? name = null)
    {
        Location = "memory:" + (name ?? Interlocked.Increment(ref s_instances).ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    public string Location { get; }

    /// <summary>Null until <see cref="KeepCatalog"/>; then a catalog like a Haven server's, for writer tests.</summary>
    public IChunkCatalog? Catalog { get; private set; }

    /// <summary>Makes the store keep a blob catalog (as a Haven server does) and returns it.</summary>
    public MemoryChunkCatalog KeepCatalog()
    {
        var catalog = new MemoryChunkCatalog(this);
        Catalog = catalog;
        return catalog;
    }

    /// <summary>How many files the store holds.</summary>
    public int Count => _files.Count;

    /// <summary>The sum of the sizes of all files.</summary>
    public long TotalBytes => _files.Values.Sum(f => (long)f.Length);

    /// <summary>Every file's handle, in no particular order.</summary>
    public IReadOnlyList<StoreHandle> Handles => _files.Keys.ToList();

    /// <summary>A copy of a file's bytes, or null; for test assertions that should not go through the contract.</summary>
    public byte[]? Peek(StoreHandle handle) => _files.TryGetValue(handle, out byte[]? bytes) ? (byte[])bytes.Clone() : null;

    /// <summary>Replaces a file's bytes behind the contract's back, e.g. to simulate corruption at rest.</summary>
    public void Poke(StoreHandle handle, ReadOnlySpan<byte> bytes)
    {
        StoreLayout.ValidateName(handle);
        _files[handle] = bytes.ToArray();
    }

    public Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        StoreLayout.ValidateName(handle);
        cancellationToken.ThrowIfCancellationRequested();
        _files[handle] = data.ToArray();
        return Task.CompletedTask;
    }

    public Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        StoreLayout.ValidateName(handle);
        cancellationToken.ThrowIfCancellationRequested();
        return Task.FromResult((byte[])Find(handle).Clone());
    }

    public Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        StoreLayout.ValidateName(handle);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        cancellationToken.ThrowIfCancellationRequested();
        byte[] bytes = Find(handle);
        if (offset + buffer.Length > bytes.Length)
        {
            throw new StoreException(
                StoreErrorKind.Permanent,
                $"cannot read {buffer.Length} bytes at offset {offset} of {handle} in {Location}: the file has {bytes.Length} bytes");
        }

        bytes.AsSpan((int)offset, buffer.Length).CopyTo(buffer.Span);
        return Task.CompletedTask;
    }

    public async IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Task.Yield();
        foreach (var (handle, bytes) in _files)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (handle.Kind == kind)
            {
                yield return new StoreFileInfo(handle, bytes.Length);
            }
        }
    }

    public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        StoreLayout.ValidateName(handle);
        cancellationToken.ThrowIfCancellationRequested();
        return Task.FromResult<StoreFileInfo?>(
            _files.TryGetValue(handle, out byte[]? bytes) ? new StoreFileInfo(handle, bytes.Length) : null);
    }

    public Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        StoreLayout.ValidateName(handle);
        cancellationToken.ThrowIfCancellationRequested();
        _files.TryRemove(handle, out _);
        return Task.CompletedTask;
    }

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private byte[] Find(StoreHandle handle) =>
        _files.TryGetValue(handle, out byte[]? bytes) ? bytes : throw StoreException.NotFound(handle, Location);
}

/// <summary>The catalog of a <see cref="MemoryStore"/>: registered ids of packs the store holds. Thread-safe.</summary>
public sealed class MemoryChunkCatalog(MemoryStore store) : IChunkCatalog
{
    private readonly ConcurrentDictionary<Haven.Core.ObjectId, Haven.Core.ObjectId> _blobs = new();

    public int MaxBatch => 1000;

    /// <summary>Calls of <see cref="FindKnownAsync"/> so far.</summary>
    public int Queries => Volatile.Read(ref _queries);

    private int _queries;

    public Task<IReadOnlySet<Haven.Core.ObjectId>> FindKnownAsync(IReadOnlyList<Haven.Core.ObjectId> ids, CancellationToken cancellationToken)
    {
        if (ids.Count > MaxBatch)
        {
            throw new ArgumentException($"{ids.Count} ids in one batch (at most {MaxBatch})", nameof(ids));
        }

        Interlocked.Increment(ref _queries);
        IReadOnlySet<Haven.Core.ObjectId> known = ids.Where(_blobs.ContainsKey).ToHashSet();
        return Task.FromResult(known);
    }

    public Task RegisterAsync(IReadOnlyList<CatalogPack> packs, CancellationToken cancellationToken)
    {
        foreach (var pack in packs)
        {
            if (store.Peek(new StoreHandle(FileKind.Pack, pack.Pack.ToString())) is null)
            {
                continue;
            }

            foreach (var id in pack.Blobs)
            {
                _blobs[id] = pack.Pack;
            }
        }

        return Task.CompletedTask;
    }
}
