using System.Runtime.CompilerServices;
using Haven.Storage;

namespace Haven.Testing;

/// <summary>The operations of <see cref="IStore"/>, for counting calls and aiming faults.</summary>
public enum StoreOperation
{
    Put,
    Get,
    ReadRange,
    List,
    Stat,
    Delete,
}

/// <summary>
/// Wraps a store and misbehaves on request, for testing how the layers above cope:
/// <list type="bullet">
/// <item><see cref="FailNext"/>: the next N calls of one operation throw a <see cref="StoreException"/> of a given kind
/// (before reaching the inner store, so a failed put stores nothing).</item>
/// <item><see cref="FailListingAfter"/>: the next listing throws after yielding some files.</item>
/// <item><see cref="FailPutsAfterBytes"/>: "disk full": once the bytes put through this wrapper would exceed a limit, puts
/// fail with <see cref="StoreErrorKind.NoSpace"/> and store nothing.</item>
/// <item><see cref="CorruptReads"/>: flips a bit in what Get and ReadRange return for one file (what is stored stays intact).</item>
/// <item><see cref="CallCount"/>: how often each operation was called, faults included.</item>
/// </list>
/// Thread-safe; faults are consumed in call order.
/// </summary>
public sealed class FaultyStore : IStore
{
    private readonly IStore _inner;
    private readonly object _lock = new();
    private readonly int[] _calls = new int[Enum.GetValues<StoreOperation>().Length];
    private readonly Queue<StoreErrorKind>[] _failures = Enum.GetValues<StoreOperation>().Select(_ => new Queue<StoreErrorKind>()).ToArray();
    private readonly Dictionary<StoreHandle, long?> _corrupt = new();
    private (int AfterItems, StoreErrorKind Kind)? _listingFailure;
    private long? _putByteLimit;
    private long _bytesPut;
    private (StoreOperation Operation, int Nth)? _crash;
    private int _crashCount;
    private Func<StoreHandle, bool>? _refusePuts;

    public FaultyStore(IStore inner)
    {
        ArgumentNullException.ThrowIfNull(inner);
        _inner = inner;
    }

    public IStore Inner => _inner;

    public string Location => _inner.Location;

    public IChunkCatalog? Catalog => _catalogDown ? UnreachableCatalog.Instance : _inner.Catalog;

    private volatile bool _catalogDown;

    /// <summary>Gives the store a catalog that cannot be reached: every call fails as a transient store error.</summary>
    public void FailCatalog() => _catalogDown = true;

    private sealed class UnreachableCatalog : IChunkCatalog
    {
        public static readonly UnreachableCatalog Instance = new();

        public int MaxBatch => 100;

        public Task<IReadOnlySet<Haven.Core.ObjectId>> FindKnownAsync(IReadOnlyList<Haven.Core.ObjectId> ids, CancellationToken cancellationToken) =>
            throw new StoreException(StoreErrorKind.Transient, "the catalog is down");

        public Task RegisterAsync(IReadOnlyList<CatalogPack> packs, CancellationToken cancellationToken) =>
            throw new StoreException(StoreErrorKind.Transient, "the catalog is down");
    }

    /// <summary>Total bytes of the puts that went through to the inner store.</summary>
    public long BytesPut => Interlocked.Read(ref _bytesPut);

    /// <summary>True once the crash set by <see cref="CrashAt"/> happened.</summary>
    public bool Crashed { get; private set; }

    /// <summary>
    /// Simulates the death of the writer at the <paramref name="nth"/> call of <paramref name="operation"/> (counted
    /// from now): that call and every later put and delete fail permanently, as if the process were gone.
    /// </summary>
    public void CrashAt(StoreOperation operation, int nth)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(nth, 1);
        lock (_lock)
        {
            _crash = (operation, nth);
            _crashCount = 0;
            Crashed = false;
        }
    }

    /// <summary>Puts of handles matching <paramref name="refuse"/> fail permanently (null: none do).</summary>
    public void RefusePuts(Func<StoreHandle, bool>? refuse)
    {
        lock (_lock)
        {
            _refusePuts = refuse;
        }
    }

    /// <summary>Makes the next <paramref name="count"/> calls of <paramref name="operation"/> fail with <paramref name="kind"/>.</summary>
    public void FailNext(StoreOperation operation, int count = 1, StoreErrorKind kind = StoreErrorKind.Transient)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        lock (_lock)
        {
            for (int i = 0; i < count; i++)
            {
                _failures[(int)operation].Enqueue(kind);
            }
        }
    }

    /// <summary>Makes the next listing fail with <paramref name="kind"/> after it has yielded <paramref name="afterItems"/> files.</summary>
    public void FailListingAfter(int afterItems, StoreErrorKind kind = StoreErrorKind.Transient)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(afterItems);
        lock (_lock)
        {
            _listingFailure = (afterItems, kind);
        }
    }

    /// <summary>
    /// From now on, a put fails with <see cref="StoreErrorKind.NoSpace"/> when the bytes put so far plus its own would
    /// exceed <paramref name="limit"/>; null lifts the limit. Counting starts at <see cref="BytesPut"/>'s current value.
    /// </summary>
    public void FailPutsAfterBytes(long? limit)
    {
        lock (_lock)
        {
            _putByteLimit = limit;
        }
    }

    /// <summary>
    /// Flips the lowest bit of the byte at <paramref name="fileOffset"/> in every read of <paramref name="handle"/> that
    /// covers it; with null, the first byte of whatever each read returns.
    /// </summary>
    public void CorruptReads(StoreHandle handle, long? fileOffset = null)
    {
        lock (_lock)
        {
            _corrupt[handle] = fileOffset;
        }
    }

    public void StopCorrupting(StoreHandle handle)
    {
        lock (_lock)
        {
            _corrupt.Remove(handle);
        }
    }

    /// <summary>Calls of <paramref name="operation"/> so far, including those that failed.</summary>
    public int CallCount(StoreOperation operation) => Volatile.Read(ref _calls[(int)operation]);

    public void ResetCounts()
    {
        for (int i = 0; i < _calls.Length; i++)
        {
            Interlocked.Exchange(ref _calls[i], 0);
        }
    }

    public async Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        Enter(StoreOperation.Put, handle);
        lock (_lock)
        {
            if (_putByteLimit is { } limit && _bytesPut + data.Length > limit)
            {
                throw new StoreException(
                    StoreErrorKind.NoSpace,
                    $"cannot write {handle} to {Location}: no space left (injected: limit {limit} bytes, {_bytesPut} used)");
            }

            // Counted before the put so concurrent puts cannot together pass the limit; undone if the put fails.
            _bytesPut += data.Length;
        }

        try
        {
            await _inner.PutAsync(handle, data, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            Interlocked.Add(ref _bytesPut, -data.Length);
            throw;
        }
    }

    public async Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        Enter(StoreOperation.Get, handle);
        byte[] bytes = await _inner.GetAsync(handle, cancellationToken).ConfigureAwait(false);
        Corrupt(handle, 0, bytes);
        return bytes;
    }

    public async Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        Enter(StoreOperation.ReadRange, handle);
        await _inner.ReadRangeAsync(handle, offset, buffer, cancellationToken).ConfigureAwait(false);
        Corrupt(handle, offset, buffer.Span);
    }

    public async IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        Enter(StoreOperation.List, null);
        (int AfterItems, StoreErrorKind Kind)? failure;
        lock (_lock)
        {
            failure = _listingFailure;
            _listingFailure = null;
        }

        int yielded = 0;
        await foreach (var info in _inner.ListAsync(kind, cancellationToken).ConfigureAwait(false))
        {
            if (failure is { } f && yielded == f.AfterItems)
            {
                throw Injected(f.Kind, $"list {kind}", yielded);
            }

            yield return info;
            yielded++;
        }

        if (failure is { } late && yielded <= late.AfterItems)
        {
            throw Injected(late.Kind, $"list {kind}", yielded);
        }
    }

    public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        Enter(StoreOperation.Stat, handle);
        return _inner.StatAsync(handle, cancellationToken);
    }

    public Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        Enter(StoreOperation.Delete, handle);
        return _inner.DeleteAsync(handle, cancellationToken);
    }

    public ValueTask DisposeAsync() => _inner.DisposeAsync();

    /// <summary>Counts the call and throws an injected failure if one is queued for the operation.</summary>
    private void Enter(StoreOperation operation, StoreHandle? handle)
    {
        if (handle is { } h)
        {
            StoreLayout.ValidateName(h); // argument errors come first, as from a real store
        }

        Interlocked.Increment(ref _calls[(int)operation]);
        StoreErrorKind kind;
        lock (_lock)
        {
            if (_crash is { } crash && operation == crash.Operation && ++_crashCount == crash.Nth)
            {
                Crashed = true;
            }

            if (Crashed && operation is StoreOperation.Put or StoreOperation.Delete)
            {
                kind = StoreErrorKind.Permanent;
            }
            else if (operation == StoreOperation.Put && handle is { } put && _refusePuts?.Invoke(put) == true)
            {
                kind = StoreErrorKind.Permanent;
            }
            else if (!_failures[(int)operation].TryDequeue(out kind))
            {
                return;
            }
        }

        throw Injected(kind, handle is { } target ? $"{operation} {target}" : operation.ToString(), null);
    }

    private StoreException Injected(StoreErrorKind kind, string what, int? afterItems) =>
        new(kind, $"injected {kind} failure: {what} in {Location}" + (afterItems is { } n ? $" after {n} items" : ""));

    private void Corrupt(StoreHandle handle, long offset, Span<byte> data)
    {
        long? at;
        lock (_lock)
        {
            if (!_corrupt.TryGetValue(handle, out at))
            {
                return;
            }
        }

        long index = at is { } fileOffset ? fileOffset - offset : 0;
        if (index >= 0 && index < data.Length)
        {
            data[(int)index] ^= 0x01;
        }
    }
}
