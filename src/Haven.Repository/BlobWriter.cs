using System.Collections.Concurrent;
using Haven.Core;
using Haven.Repository.Index;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;

namespace Haven.Repository;

/// <summary>Tuning of <see cref="BlobWriter"/>.</summary>
public sealed record BlobWriterOptions
{
    /// <summary>Packs uploaded at once. Two keep a local disk busy; S3 benefits from more (set by the caller).</summary>
    public int UploadConcurrency { get; init; } = 2;

    /// <summary>Write an index file after this many uploaded packs, so an interrupted backup loses little.</summary>
    public int PacksPerIndex { get; init; } = 8;

    /// <summary>…or after this much time since the last index file.</summary>
    public TimeSpan IndexInterval { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>
    /// Folder for data packs while they fill and upload, or null to build them in memory. A 2.1 GB first backup
    /// peaked at 328 MB with packs in memory (a filling pack and two uploading ones, 17 MiB each, plus what the
    /// GC kept of them); spooled, the packs live in the page cache. Put it on the repository's file system when the
    /// repository is a local folder: the store then renames a finished pack into place instead of copying it.
    /// </summary>
    public string? SpoolDirectory { get; init; }
}

/// <summary>
/// Stores blobs: deduplicates against the index and against blobs in flight, encodes on the calling thread, fills
/// packs (one for data, one for trees), uploads full packs, and writes index files for uploaded packs.
/// Thread-safe: many producers call <see cref="SaveAsync"/> at once. Order of durability: a pack is uploaded before
/// any index file names it, and <see cref="FlushAsync"/> must complete before a snapshot names the blobs.
/// </summary>
public sealed class BlobWriter : IAsyncDisposable
{
    private readonly Repository _repo;
    private readonly BlobWriterOptions _options;
    private readonly ConcurrentDictionary<ObjectId, byte> _inFlight = new();

    /// <summary>Blobs the store's catalog said it holds (another writer stored them); see <see cref="IChunkCatalog"/>.</summary>
    private readonly ConcurrentDictionary<ObjectId, byte> _catalogKnown = new();
    private readonly IPackBuilder?[] _builders = new IPackBuilder?[2];
    private readonly Lock _builderLock = new();
    private readonly SemaphoreSlim _uploads;
    private readonly List<IndexedPack> _unindexed = [];
    private readonly ConcurrentBag<byte[]> _packBuffers = [];

    /// <summary>
    /// Encoding buffers kept between blobs, per blob type (so the many small tree encodings do not grow buffers to
    /// data-chunk size), at most <see cref="MaxScratchPerType"/> each: enough for the encoders of a 2-4 core machine;
    /// more concurrent callers get a fresh scratch that is dropped afterwards.
    /// </summary>
    private readonly ConcurrentQueue<EncodeScratch>[] _scratch = [new(), new()];

    private const int MaxScratchPerType = 4;
    private readonly List<Task> _uploadTasks = [];
    private Exception? _uploadFailure;
    private readonly Lock _indexLock = new();
    private long _lastIndexTicks;
    private long _blobsAdded;
    private long _bytesAdded;
    private long _bytesStored;
    private long _catalogBlobs;
    private long _catalogBytes;
    private long _catalogFailures;

    public BlobWriter(Repository repo, BlobWriterOptions? options = null)
    {
        _repo = repo;
        _options = options ?? new BlobWriterOptions();
        _uploads = new SemaphoreSlim(_options.UploadConcurrency);
        _lastIndexTicks = repo.Time.GetTimestamp();
        if (_options.SpoolDirectory is { } spool)
        {
            try
            {
                Directory.CreateDirectory(spool);
            }
            catch (Exception e) when (StoreErrors.Translate(e, $"cannot create the pack spool folder {spool}: {e.Message}") is { } translated)
            {
                throw translated;
            }

            SpooledPackBuilder.SweepStale(spool);
        }
    }

    /// <summary>Blobs this writer stored (not counting duplicates).</summary>
    public long BlobsAdded => Interlocked.Read(ref _blobsAdded);

    /// <summary>Plaintext bytes of the blobs this writer stored.</summary>
    public long BytesAdded => Interlocked.Read(ref _bytesAdded);

    /// <summary>Bytes those blobs take in packs (compressed and encrypted).</summary>
    public long BytesStored => Interlocked.Read(ref _bytesStored);

    /// <summary>Blobs left out of packs because the store's catalog said it holds them already.</summary>
    public long BlobsFoundInCatalog => Interlocked.Read(ref _catalogBlobs);

    /// <summary>Plaintext bytes of those blobs: what did not travel.</summary>
    public long BytesFoundInCatalog => Interlocked.Read(ref _catalogBytes);

    /// <summary>Catalog calls that failed (the writer then sent the data, or registered nothing).</summary>
    public long CatalogFailures => Interlocked.Read(ref _catalogFailures);

    /// <summary>Packs uploaded by this writer, in order; also the names a resume journal needs.</summary>
    public event Action<ObjectId>? PackUploaded;

    /// <summary>True when the repository already holds the blob or this writer is storing it.</summary>
    public bool IsKnown(ObjectId id) => _repo.Index.Contains(id) || _inFlight.ContainsKey(id) || _catalogKnown.ContainsKey(id);

    /// <summary>
    /// Stores a blob unless it is known. Returns true when this call stored it. The caller keeps ownership of
    /// <paramref name="plaintext"/>; it is not referenced after the call returns.
    /// </summary>
    public async ValueTask<bool> SaveAsync(BlobType type, ObjectId id, ReadOnlyMemory<byte> plaintext, CancellationToken ct)
    {
        if (Volatile.Read(ref _uploadFailure) is { } failure)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }

        if (_repo.Index.Contains(id) || _catalogKnown.ContainsKey(id) || !_inFlight.TryAdd(id, 0))
        {
            return false;
        }

        var scratches = _scratch[(int)type];
        var scratch = scratches.TryDequeue(out var kept) ? kept : new EncodeScratch();
        var (buffer, length, flags) = _repo.Codec.Encode(type, id, plaintext.Span, scratch);
        IPackBuilder? full = null;
        try
        {
            lock (_builderLock)
            {
                ref var builder = ref _builders[(int)type];
                // Close the pack before a blob would push it past the target size, so every pack buffer has one size.
                if (builder is { Count: > 0 } && (builder.Length + length > _repo.Config.PackSize || builder.Count >= PackFormat.MaxEntries))
                {
                    full = builder;
                    builder = null;
                }

                // Tree packs rarely fill (a few MiB of trees per million files): start them small and let them grow.
                builder ??= type == BlobType.Tree
                    ? new PackBuilder(_repo.Aead, 1024 * 1024)
                    : _options.SpoolDirectory is { } spool
                        ? new SpooledPackBuilder(_repo.Aead, spool)
                        : new PackBuilder(_repo.Aead, _packBuffers.TryTake(out var reused) ? reused : new byte[PackBufferSize]);
                builder.Add(id, type, flags, buffer.AsSpan(0, length), plaintext.Length);
            }
        }
        catch
        {
            // A full pack taken out of _builders belongs to no one until its upload starts.
            (full as SpooledPackBuilder)?.Dispose();
            throw;
        }
        finally
        {
            if (scratches.Count < MaxScratchPerType)
            {
                scratches.Enqueue(scratch);
            }
        }

        Interlocked.Increment(ref _blobsAdded);
        Interlocked.Add(ref _bytesAdded, plaintext.Length);
        Interlocked.Add(ref _bytesStored, length);
        if (full is not null)
        {
            await StartUploadAsync(full, ct).ConfigureAwait(false);
        }

        return true;
    }

    /// <summary>
    /// Starts uploading a full pack in the background, so the caller goes back to encoding; waits only while
    /// <see cref="BlobWriterOptions.UploadConcurrency"/> uploads are already running (this bounds the pack buffers
    /// alive at once). A failed upload is rethrown by the next <see cref="SaveAsync"/> or by <see cref="FlushAsync"/>.
    /// </summary>
    private async Task StartUploadAsync(IPackBuilder builder, CancellationToken ct)
    {
        try
        {
            await _uploads.WaitAsync(ct).ConfigureAwait(false);
        }
        catch
        {
            (builder as SpooledPackBuilder)?.Dispose(); // cancelled before the upload owned it
            throw;
        }

        var task = Task.Run(() => UploadAsync(builder, ct), CancellationToken.None);
        lock (_uploadTasks)
        {
            _uploadTasks.RemoveAll(t => t.IsCompletedSuccessfully);
            _uploadTasks.Add(task);
        }
    }

    /// <summary>A pack's buffer: the target size and room for the header (a pack of many small blobs grows it).</summary>
    private int PackBufferSize => _repo.Config.PackSize + (1024 * 1024);

    /// <summary>Uploads one pack and indexes it; the caller holds one <see cref="_uploads"/> slot, released here.</summary>
    private async Task UploadAsync(IPackBuilder builder, CancellationToken ct)
    {
        try
        {
            if (_repo.Store.Catalog is { } catalog && !await LeaveOutCatalogedAsync(catalog, builder, ct).ConfigureAwait(false))
            {
                return; // every blob of the pack is in the repository already
            }

            ObjectId name;
            if (builder is SpooledPackBuilder spooled)
            {
                (name, _) = spooled.Finish();
                await _repo.Store.PutFileAsync(new StoreHandle(FileKind.Pack, name.ToString()), spooled.FilePath, ct).ConfigureAwait(false);
            }
            else
            {
                var memory = (PackBuilder)builder;
                (var bytes, name) = memory.Finish();
                await _repo.Store.PutAsync(new StoreHandle(FileKind.Pack, name.ToString()), bytes, ct).ConfigureAwait(false);
                if (_repo.Cache is not null && builder.Blobs[0].Type == BlobType.Tree)
                {
                    _repo.Cache.Put(FileKind.Pack, name.ToString(), bytes.Span);
                }
            }
            var pack = new IndexedPack(name, builder.Blobs.ToArray());
            _repo.Index.Add(pack);
            PackUploaded?.Invoke(name);
            bool flush;
            lock (_indexLock)
            {
                _unindexed.Add(pack);
                flush = _unindexed.Count >= _options.PacksPerIndex
                    || _repo.Time.GetElapsedTime(_lastIndexTicks) >= _options.IndexInterval;
            }

            if (flush)
            {
                await WriteIndexAsync(ct).ConfigureAwait(false);
            }
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _uploadFailure, e, null);
            throw;
        }
        finally
        {
            if (builder is SpooledPackBuilder spooled)
            {
                spooled.Dispose();
            }
            else if (builder is PackBuilder { Buffer.Length: var size } memory && size == PackBufferSize)
            {
                _packBuffers.Add(memory.Buffer);
            }

            _uploads.Release();
        }
    }

    /// <summary>
    /// Asks the store's catalog, in batches, which of the pack's blobs the repository holds already (stored by another
    /// client since this writer loaded the index) and takes those out of the pack, so they do not travel. Returns
    /// false when nothing is left to upload. A failing catalog leaves the pack as it is.
    /// </summary>
    private async Task<bool> LeaveOutCatalogedAsync(IChunkCatalog catalog, IPackBuilder builder, CancellationToken ct)
    {
        var known = new HashSet<ObjectId>();
        var ids = builder.Blobs.Select(b => b.Id).ToList();
        try
        {
            for (int i = 0; i < ids.Count; i += catalog.MaxBatch)
            {
                known.UnionWith(await catalog.FindKnownAsync(ids.GetRange(i, Math.Min(catalog.MaxBatch, ids.Count - i)), ct).ConfigureAwait(false));
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Interlocked.Increment(ref _catalogFailures);
            return true;
        }

        if (known.Count == 0)
        {
            return true;
        }

        foreach (var blob in builder.Blobs)
        {
            if (known.Contains(blob.Id))
            {
                _catalogKnown.TryAdd(blob.Id, 0);
                Interlocked.Decrement(ref _blobsAdded);
                Interlocked.Add(ref _bytesAdded, -blob.RawLength);
                Interlocked.Add(ref _bytesStored, -blob.Length);
                Interlocked.Increment(ref _catalogBlobs);
                Interlocked.Add(ref _catalogBytes, blob.RawLength);
            }
        }

        builder.RemoveBlobs(known);
        return builder.Count > 0;
    }

    private async Task WriteIndexAsync(CancellationToken ct)
    {
        var file = new IndexFile();
        lock (_indexLock)
        {
            if (_unindexed.Count == 0)
            {
                return;
            }

            file.Packs.AddRange(_unindexed);
            _unindexed.Clear();
            _lastIndexTicks = _repo.Time.GetTimestamp();
        }

        try
        {
            await _repo.SaveSealedAsync(FileKind.Index, file.Encode(), ct).ConfigureAwait(false);
        }
        catch
        {
            lock (_indexLock)
            {
                _unindexed.InsertRange(0, file.Packs);
            }

            throw;
        }

        // Only now, with an index file naming them, may other writers skip these blobs.
        if (_repo.Store.Catalog is { } catalog)
        {
            try
            {
                await catalog.RegisterAsync(file.Packs.Select(p => new CatalogPack(p.Pack, p.Blobs.Select(b => b.Id).ToArray())).ToList(), ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                Interlocked.Increment(ref _catalogFailures);
            }
        }
    }

    /// <summary>Uploads the partly filled packs and writes the index for everything uploaded. Call before saving a snapshot.</summary>
    public async Task FlushAsync(CancellationToken ct)
    {
        var builders = new List<IPackBuilder>();
        lock (_builderLock)
        {
            for (int i = 0; i < _builders.Length; i++)
            {
                if (_builders[i] is { Count: > 0 } b)
                {
                    builders.Add(b);
                }

                _builders[i] = null;
            }
        }

        for (int i = 0; i < builders.Count; i++)
        {
            try
            {
                await StartUploadAsync(builders[i], ct).ConfigureAwait(false);
            }
            catch
            {
                foreach (var left in builders.Skip(i + 1))
                {
                    (left as SpooledPackBuilder)?.Dispose();
                }

                throw;
            }
        }

        Task[] pending;
        lock (_uploadTasks)
        {
            pending = _uploadTasks.ToArray();
            _uploadTasks.Clear();
        }

        await Task.WhenAll(pending).ConfigureAwait(false);
        if (Volatile.Read(ref _uploadFailure) is { } failure)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }

        await WriteIndexAsync(ct).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        Task[] pending;
        lock (_uploadTasks)
        {
            pending = _uploadTasks.ToArray();
        }

        try
        {
            await Task.WhenAll(pending).ConfigureAwait(false);
        }
        catch (Exception)
        {
            // Already reported through SaveAsync or FlushAsync.
        }

        lock (_builderLock)
        {
            // Packs never finished (the backup failed or was cancelled) leave no spool file behind.
            foreach (var builder in _builders)
            {
                (builder as SpooledPackBuilder)?.Dispose();
            }
        }

        _uploads.Dispose();
    }
}
