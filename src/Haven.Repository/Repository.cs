using System.Security.Cryptography;
using Haven.Core;
using Haven.Repository.Chunking;
using Haven.Repository.Crypto;
using Haven.Repository.Index;
using Haven.Repository.Model;
using Haven.Repository.Packs;
using Haven.Storage;

namespace Haven.Repository;

/// <summary>Choices made once, at <c>init</c>.</summary>
public sealed record RepositoryInitOptions
{
    public ChunkerParameters Chunker { get; init; } = ChunkerParameters.Default;

    public int Compression { get; init; } = 3;

    public KdfParameters? Kdf { get; init; }
}

/// <summary>
/// An opened repository: its config, its master key and the loaded index. Thread-safe for reading blobs and
/// snapshots; writing goes through <see cref="BlobWriter"/>.
/// </summary>
public sealed class Repository : IAsyncDisposable
{
    private Repository(IStore store, RepositoryConfig config, MasterKey key, ObjectId keyId, TimeProvider time)
    {
        Store = store;
        Config = config;
        Key = key;
        KeyId = keyId;
        Time = time;
        Aead = new Aead(key.EncryptionKey);
        Codec = new BlobCodec(Aead, config.Compression);
        Chunker = new ContentDefinedChunker(key.ChunkerKey, config.Chunker);
    }

    public IStore Store { get; }

    public RepositoryConfig Config { get; }

    public MasterKey Key { get; }

    /// <summary>The key file that opened this repository.</summary>
    public ObjectId KeyId { get; }

    public TimeProvider Time { get; }

    public Aead Aead { get; }

    public BlobCodec Codec { get; }

    public ContentDefinedChunker Chunker { get; }

    public MasterIndex Index { get; private set; } = new();

    /// <summary>Index files the loaded index was built from (superseded ones excluded).</summary>
    public IReadOnlyCollection<ObjectId> IndexFiles { get; private set; } = [];

    public string Location => Store.Location;

    /// <summary>Local cache of index, snapshot and tree-pack files, or null (every read goes to the store).</summary>
    public RepositoryCache? Cache { get; private set; }

    /// <summary>Turns on the local cache under <paramref name="cacheRoot"/> (see <see cref="RepositoryCache"/>).</summary>
    public void UseCache(string cacheRoot) => Cache = new RepositoryCache(cacheRoot, Config.Id);

    public static async Task<Repository> InitAsync(IStore store, string password, RepositoryInitOptions options, TimeProvider? time = null, CancellationToken ct = default)
    {
        time ??= TimeProvider.System;
        if (await store.StatAsync(StoreHandle.Config, ct).ConfigureAwait(false) is not null)
        {
            throw new HavenException(ErrorCode.RepositoryExists, $"a repository already exists at {store.Location}", "use it as it is, or choose another location");
        }

        options.Chunker.Validate();
        var now = time.GetUtcNow();
        var config = RepositoryConfig.Create(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)), now, options.Chunker, options.Compression);
        var master = MasterKey.Generate();
        var keyFile = KeyFile.Create(master, password, options.Kdf ?? KdfParameters.DefaultArgon2id(), now);
        var keyId = await WriteKeyFileAsync(store, keyFile, ct).ConfigureAwait(false);
        // The config goes last: a repository without it is not a repository, so an interrupted init leaves none.
        await store.PutAsync(StoreHandle.Config, config.Serialize(), ct).ConfigureAwait(false);
        return new Repository(store, config, master, keyId, time);
    }

    public static async Task<RepositoryConfig> ReadConfigAsync(IStore store, CancellationToken ct)
    {
        byte[] bytes;
        try
        {
            bytes = await store.GetAsync(StoreHandle.Config, ct).ConfigureAwait(false);
        }
        catch (StoreException e) when (e.Kind == StoreErrorKind.NotFound)
        {
            throw new HavenException(ErrorCode.RepositoryNotFound, $"there is no repository at {store.Location}", "check the repository location, or create one with 'haven init'", e);
        }

        return RepositoryConfig.Parse(bytes, store.Location);
    }

    /// <summary>Opens the repository with any key file the password fits; the index is not loaded yet.</summary>
    public static async Task<Repository> OpenAsync(IStore store, string password, TimeProvider? time = null, CancellationToken ct = default)
    {
        var config = await ReadConfigAsync(store, ct).ConfigureAwait(false);
        var keys = new List<StoreFileInfo>();
        await foreach (var f in store.ListAsync(FileKind.Key, ct).ConfigureAwait(false))
        {
            keys.Add(f);
        }

        if (keys.Count == 0)
        {
            throw new HavenException(ErrorCode.Corrupt, $"the repository at {store.Location} has no key files", "restore the keys/ folder from a copy of the repository");
        }

        HavenException? damaged = null;
        foreach (var k in keys)
        {
            KeyFile file;
            try
            {
                file = KeyFile.Parse(await store.GetAsync(k.Handle, ct).ConfigureAwait(false), k.Handle.Name);
            }
            catch (HavenException e) when (e.Code == ErrorCode.Corrupt)
            {
                damaged = e;
                continue;
            }

            var master = file.TryOpen(password);
            if (master is not null)
            {
                return new Repository(store, config, master, ObjectId.Parse(k.Handle.Name), time ?? TimeProvider.System);
            }
        }

        throw new HavenException(ErrorCode.WrongPassword,
            damaged is null ? $"the password opens none of the {keys.Count} key(s) of the repository at {store.Location}" : $"the password opens no intact key of the repository at {store.Location} ({damaged.Message})",
            "check the password (HAVEN_PASSWORD, HAVEN_PASSWORD_FILE or HAVEN_PASSWORD_COMMAND)");
    }

    internal static async Task<ObjectId> WriteKeyFileAsync(IStore store, KeyFile keyFile, CancellationToken ct)
    {
        var bytes = keyFile.Serialize();
        var id = new ObjectId(SHA256.HashData(bytes));
        await store.PutAsync(new StoreHandle(FileKind.Key, id.ToString()), bytes, ct).ConfigureAwait(false);
        return id;
    }

    /// <summary>Adds a key slot that opens this repository with <paramref name="password"/>.</summary>
    public Task<ObjectId> AddKeyAsync(string password, KdfParameters? kdf, CancellationToken ct) =>
        WriteKeyFileAsync(Store, KeyFile.Create(Key, password, kdf ?? KdfParameters.DefaultArgon2id(), Time.GetUtcNow()), ct);

    // ---- sealed files -------------------------------------------------------------------------------------------

    public static string KindLabel(FileKind kind) => kind switch
    {
        FileKind.Index => "index",
        FileKind.Snapshot => "snapshot",
        FileKind.Lock => "lock",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), $"{kind} files are not sealed"),
    };

    /// <summary>Seals and stores a file named by the SHA-256 of its stored bytes.</summary>
    public async Task<ObjectId> SaveSealedAsync(FileKind kind, ReadOnlyMemory<byte> plaintext, CancellationToken ct)
    {
        var bytes = SealedFile.Seal(Aead, KindLabel(kind), plaintext.Span, compress: kind != FileKind.Lock);
        var id = new ObjectId(SHA256.HashData(bytes));
        await Store.PutAsync(new StoreHandle(kind, id.ToString()), bytes, ct).ConfigureAwait(false);
        if (Cache is not null && RepositoryCache.IsCached(kind))
        {
            Cache.Put(kind, id.ToString(), bytes);
        }

        return id;
    }

    public async Task<byte[]> LoadSealedAsync(FileKind kind, ObjectId id, CancellationToken ct)
    {
        var handle = new StoreHandle(kind, id.ToString());
        byte[] bytes;
        try
        {
            bytes = Cache is not null && RepositoryCache.IsCached(kind)
                ? await Cache.GetAsync(kind, handle.Name, () => Store.GetAsync(handle, ct)).ConfigureAwait(false)
                : await Store.GetAsync(handle, ct).ConfigureAwait(false);
        }
        catch (StoreException e) when (e.Kind == StoreErrorKind.NotFound)
        {
            throw new HavenException(ErrorCode.NotFound, $"{StoreLayout.PathOf(handle)} does not exist", null, e);
        }

        if (kind != FileKind.Lock && !SHA256.HashData(bytes).AsSpan().SequenceEqual(id.ToArray()))
        {
            throw new HavenException(ErrorCode.Corrupt, $"{StoreLayout.PathOf(handle)} is damaged: its content does not match its name", $"run 'haven repair {KindLabel(kind)}'");
        }

        return SealedFile.Open(Aead, KindLabel(kind), bytes, StoreLayout.PathOf(handle));
    }

    public async Task<List<ObjectId>> ListAsync(FileKind kind, CancellationToken ct)
    {
        var ids = new List<ObjectId>();
        await foreach (var f in Store.ListAsync(kind, ct).ConfigureAwait(false))
        {
            ids.Add(ObjectId.Parse(f.Handle.Name));
        }

        return ids;
    }

    // ---- index --------------------------------------------------------------------------------------------------

    /// <summary>Reads every index file (in parallel) and builds the master index; superseded files are skipped.</summary>
    public async Task LoadIndexAsync(CancellationToken ct, Action<ObjectId, HavenException>? onDamaged = null)
    {
        var ids = await ListAsync(FileKind.Index, ct).ConfigureAwait(false);
        Cache?.Prune(FileKind.Index, ids.Select(i => i.ToString()).ToHashSet());
        var files = new System.Collections.Concurrent.ConcurrentDictionary<ObjectId, IndexFile>();
        await Parallel.ForEachAsync(ids, new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = ct }, async (id, token) =>
        {
            try
            {
                files[id] = await LoadIndexFileAsync(id, token).ConfigureAwait(false);
            }
            catch (HavenException e) when (onDamaged is not null && e.Code is ErrorCode.Corrupt or ErrorCode.NotFound)
            {
                onDamaged(id, e);
            }
        }).ConfigureAwait(false);

        var superseded = new HashSet<ObjectId>(files.Values.SelectMany(f => f.Supersedes));
        var index = new MasterIndex();
        var used = new List<ObjectId>();
        foreach (var (id, file) in files)
        {
            if (superseded.Contains(id))
            {
                continue;
            }

            used.Add(id);
            foreach (var pack in file.Packs)
            {
                index.Add(pack);
            }
        }

        Index = index;
        IndexFiles = used;
    }

    public async Task<IndexFile> LoadIndexFileAsync(ObjectId id, CancellationToken ct)
    {
        var plain = await LoadSealedAsync(FileKind.Index, id, ct).ConfigureAwait(false);
        try
        {
            return IndexFile.Decode(plain);
        }
        catch (MalformedDataException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"index/{id} is damaged: {e.Message}", "run 'haven repair index'", e);
        }
    }

    // ---- blobs --------------------------------------------------------------------------------------------------

    public bool TryLocate(ObjectId id, out BlobLocation location) => Index.TryGet(id, out location);

    /// <summary>Reads, authenticates and decompresses one blob.</summary>
    public async Task<byte[]> ReadBlobAsync(ObjectId id, CancellationToken ct)
    {
        if (!Index.TryGet(id, out var location))
        {
            throw new HavenException(ErrorCode.Corrupt, $"blob {id.Short} is referenced but no index knows it", "run 'haven repair index', then 'haven check'");
        }

        return await ReadBlobAsync(location, ct).ConfigureAwait(false);
    }

    public async Task<byte[]> ReadBlobAsync(BlobLocation location, CancellationToken ct)
    {
        var stored = new byte[location.Blob.Length];
        var handle = new StoreHandle(FileKind.Pack, location.Pack.ToString());
        try
        {
            if (Cache is not null && location.Blob.Type == BlobType.Tree)
            {
                // Tree packs are read again by every backup (the parent's trees) and ls/find/diff: keep them whole.
                var pack = await Cache.GetPackAsync(handle.Name, () => Store.GetAsync(handle, ct)).ConfigureAwait(false);
                if (location.Blob.Offset + location.Blob.Length > pack.Length)
                {
                    throw new StoreException(StoreErrorKind.Permanent, $"{StoreLayout.PathOf(handle)} is shorter than the index says");
                }

                return Decode(location, pack.AsSpan((int)location.Blob.Offset, location.Blob.Length));
            }

            await Store.ReadRangeAsync(handle, location.Blob.Offset, stored, ct).ConfigureAwait(false);
        }
        catch (StoreException e) when (e.Kind is StoreErrorKind.NotFound or StoreErrorKind.Permanent)
        {
            throw new HavenException(ErrorCode.Corrupt, $"blob {location.Blob.Id.Short} cannot be read from pack {StoreLayout.PathOf(handle)}: {e.Message}", "run 'haven check --read-data' and 'haven repair index'", e);
        }

        return Decode(location, stored);
    }

    /// <summary>
    /// Reads a data blob into a buffer rented from <see cref="BufferPool.Large"/>; the caller owns
    /// it and returns it. For restore, which reads each blob once and writes it out at once.
    /// </summary>
    public async Task<(byte[] Buffer, int Length)> ReadBlobPooledAsync(ObjectId id, CancellationToken ct)
    {
        if (!Index.TryGet(id, out var location))
        {
            throw new HavenException(ErrorCode.Corrupt, $"blob {id.Short} is referenced but no index knows it", "run 'haven repair index', then 'haven check'");
        }

        var pool = BufferPool.Large;
        var stored = pool.Rent(location.Blob.Length);
        try
        {
            var handle = new StoreHandle(FileKind.Pack, location.Pack.ToString());
            try
            {
                await Store.ReadRangeAsync(handle, location.Blob.Offset, stored.AsMemory(0, location.Blob.Length), ct).ConfigureAwait(false);
            }
            catch (StoreException e) when (e.Kind is StoreErrorKind.NotFound or StoreErrorKind.Permanent)
            {
                throw new HavenException(ErrorCode.Corrupt, $"blob {id.Short} cannot be read from pack {StoreLayout.PathOf(handle)}: {e.Message}", "run 'haven check --read-data' and 'haven repair index'", e);
            }

            var plain = pool.Rent(Math.Max(1, location.Blob.RawLength));
            if (!Codec.TryDecode(location.Blob, stored.AsSpan(0, location.Blob.Length), plain.AsSpan(0, location.Blob.RawLength)))
            {
                pool.Return(plain);
                throw DamagedBlob(location);
            }

            return (plain, location.Blob.RawLength);
        }
        finally
        {
            pool.Return(stored);
        }
    }

    private static HavenException DamagedBlob(BlobLocation location) =>
        new(ErrorCode.Corrupt,
            $"blob {location.Blob.Id.Short} in pack data/{location.Pack.ToString()[..2]}/{location.Pack} is damaged (fails authentication or decompression)",
            "run 'haven check --read-data', then 'haven repair' to salvage the rest");

    public byte[] Decode(BlobLocation location, ReadOnlySpan<byte> stored)
    {
        var plain = new byte[location.Blob.RawLength];
        if (!Codec.TryDecode(location.Blob, stored, plain))
        {
            throw DamagedBlob(location);
        }

        return plain;
    }

    public async Task<List<Node>> LoadTreeAsync(ObjectId id, CancellationToken ct)
    {
        var bytes = await ReadBlobAsync(id, ct).ConfigureAwait(false);
        try
        {
            return TreeCodec.Decode(bytes);
        }
        catch (MalformedDataException e)
        {
            throw new HavenException(ErrorCode.Corrupt, $"tree {id.Short} is damaged: {e.Message}", "run 'haven check'", e);
        }
    }

    // ---- snapshots ----------------------------------------------------------------------------------------------

    public async Task<ObjectId> SaveSnapshotAsync(Snapshot snapshot, CancellationToken ct) =>
        await SaveSealedAsync(FileKind.Snapshot, snapshot.Serialize(), ct).ConfigureAwait(false);

    public async Task<Snapshot> LoadSnapshotAsync(ObjectId id, CancellationToken ct) =>
        Snapshot.Parse(await LoadSealedAsync(FileKind.Snapshot, id, ct).ConfigureAwait(false), $"snapshots/{id}");

    /// <summary>Loads every snapshot, oldest first. Damaged snapshot files are passed to <paramref name="onDamaged"/> or thrown.</summary>
    public async Task<List<(ObjectId Id, Snapshot Snapshot)>> LoadSnapshotsAsync(CancellationToken ct, Action<ObjectId, HavenException>? onDamaged = null)
    {
        var ids = await ListAsync(FileKind.Snapshot, ct).ConfigureAwait(false);
        Cache?.Prune(FileKind.Snapshot, ids.Select(i => i.ToString()).ToHashSet());
        var result = new System.Collections.Concurrent.ConcurrentBag<(ObjectId, Snapshot)>();
        await Parallel.ForEachAsync(ids, new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = ct }, async (id, token) =>
        {
            try
            {
                result.Add((id, await LoadSnapshotAsync(id, token).ConfigureAwait(false)));
            }
            catch (HavenException e) when (onDamaged is not null && e.Code is ErrorCode.Corrupt or ErrorCode.NotFound or ErrorCode.UnsupportedFormat)
            {
                onDamaged(id, e);
            }
        }).ConfigureAwait(false);
        return result.OrderBy(s => s.Item2.Time).ThenBy(s => s.Item1).ToList();
    }

    /// <summary>
    /// Finds a snapshot by "latest", a full id or a unique id prefix (at least 4 hex digits), optionally filtered by
    /// host, paths and tags for "latest".
    /// </summary>
    public async Task<(ObjectId Id, Snapshot Snapshot)> FindSnapshotAsync(string reference, SnapshotFilter? filter, CancellationToken ct) =>
        ResolveSnapshot(await LoadSnapshotsAsync(ct).ConfigureAwait(false), reference, filter, Location);

    /// <summary>
    /// Picks the snapshot <paramref name="reference"/> names among <paramref name="all"/> (oldest first): "latest" is
    /// the newest matching <paramref name="filter"/>; anything else must be a full id or a unique prefix of at least
    /// 4 hex digits.
    /// </summary>
    public static (ObjectId Id, Snapshot Snapshot) ResolveSnapshot(IReadOnlyList<(ObjectId Id, Snapshot Snapshot)> all, string reference, SnapshotFilter? filter, string location)
    {
        if (reference == "latest")
        {
            var matching = all.Where(s => filter?.Matches(s.Snapshot) ?? true).ToList();
            if (matching.Count == 0)
            {
                throw new HavenException(ErrorCode.NotFound, $"no snapshot{filter?.Describe()} in {location}");
            }

            return matching[^1];
        }

        var id = ResolveSnapshotId(reference, all.Select(s => s.Id).ToList(), location);
        return all.First(s => s.Id == id);
    }

    /// <summary>
    /// A full snapshot id or a unique prefix (at least 4 hex digits) among <paramref name="ids"/>; works from the
    /// file names alone, so it also names snapshots whose files no longer decrypt (for repair).
    /// </summary>
    public static ObjectId ResolveSnapshotId(string reference, IReadOnlyList<ObjectId> ids, string location)
    {
        if (reference.Length < 4 || !reference.All(Uri.IsHexDigit))
        {
            throw new HavenException(ErrorCode.Usage, $"'{reference}' is neither 'latest' nor a snapshot id (at least 4 hex digits)");
        }

        var found = ids.Where(id => id.ToString().StartsWith(reference, StringComparison.OrdinalIgnoreCase)).ToList();
        return found.Count switch
        {
            0 => throw new HavenException(ErrorCode.NotFound, $"no snapshot with id {reference} in {location}", "list them with 'haven snapshots'"),
            1 => found[0],
            _ => throw new HavenException(ErrorCode.Usage, $"snapshot id prefix {reference} is ambiguous ({found.Count} snapshots match)", "give more digits"),
        };
    }

    public ValueTask DisposeAsync() => Store.DisposeAsync();
}

/// <summary>Selects snapshots by host, paths and tags (all given criteria must hold).</summary>
public sealed record SnapshotFilter(IReadOnlyList<string>? Hosts = null, IReadOnlyList<string>? Paths = null, IReadOnlyList<string>? Tags = null)
{
    public bool Matches(Snapshot s) =>
        (Hosts is not { Count: > 0 } || Hosts.Contains(s.Hostname))
        && (Paths is not { Count: > 0 } || Paths.All(p => s.Paths.Contains(p)))
        && (Tags is not { Count: > 0 } || Tags.All(t => s.Tags.Contains(t)));

    public string Describe()
    {
        var parts = new List<string>();
        if (Hosts is { Count: > 0 }) parts.Add($"host {string.Join(",", Hosts)}");
        if (Paths is { Count: > 0 }) parts.Add($"paths {string.Join(",", Paths)}");
        if (Tags is { Count: > 0 }) parts.Add($"tags {string.Join(",", Tags)}");
        return parts.Count == 0 ? "" : " for " + string.Join(", ", parts);
    }
}
