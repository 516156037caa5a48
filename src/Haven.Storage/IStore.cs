namespace Haven.Storage;

/// <summary>The kinds of file a repository keeps in a store. The numbers are persisted nowhere; the folder names are.</summary>
public enum FileKind
{
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
}

/// <summary>Names one file of a repository in a store: its kind and its name (a 64-digit hex id, or "config").</summary>
public readonly record struct StoreHandle(FileKind Kind, string Name)
{
    public static StoreHandle Config => new(FileKind.Config, "config");

    public override string ToString() => StoreLayout.PathOf(this);
}

/// <summary>What a store knows of one file without reading it.</summary>
public readonly record struct StoreFileInfo(StoreHandle Handle, long Size);

/// <summary>
/// The contract every store keeps (local folder, S3-compatible object storage, a Haven server).
/// It is deliberately small; retry, throttling and logging are wrappers around it (see <see cref="RetryingStore"/>).
/// <list type="bullet">
/// <item>Files are write-once: a repository never rewrites a name with different bytes.</item>
/// <item><see cref="PutAsync"/> is atomic: readers see the whole file or nothing, also after a crash.</item>
/// <item>A missing file is reported as <see cref="StoreException"/> with <see cref="StoreErrorKind.NotFound"/>.</item>
/// <item><see cref="DeleteAsync"/> of a missing file succeeds (it is idempotent).</item>
/// <item>Every method may be called from many threads at once.</item>
/// </list>
/// </summary>
public interface IStore : IAsyncDisposable
{
    /// <summary>Where the store is, for messages (a path or URL without credentials).</summary>
    string Location { get; }

    /// <summary>Stores <paramref name="data"/> under <paramref name="handle"/>, replacing nothing half-written.</summary>
    Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken);

    /// <summary>
    /// Stores the bytes of the local file <paramref name="path"/> under <paramref name="handle"/>, with the same
    /// atomicity as <see cref="PutAsync"/>. Writers use it for packs they built in a temporary file, so a pack never
    /// has to sit in memory whole. The file must not change during the call. A store may move the file into place
    /// instead of copying it (the local store does when the file is on the same file system), so afterwards the file
    /// may be gone; the caller deletes it if it is still there. The default reads the file and calls
    /// <see cref="PutAsync"/>, which suits stores that hold everything in memory anyway.
    /// </summary>
    async Task PutFileAsync(StoreHandle handle, string path, CancellationToken cancellationToken)
    {
        var bytes = await File.ReadAllBytesAsync(path, cancellationToken).ConfigureAwait(false);
        await PutAsync(handle, bytes, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reads a whole file.</summary>
    Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken);

    /// <summary>
    /// Reads <paramref name="buffer"/>.Length bytes starting at <paramref name="offset"/>. A range that reaches past
    /// the end of the file is an error (<see cref="StoreErrorKind.Permanent"/>), since callers only ask for ranges
    /// an index told them of.
    /// </summary>
    Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>Lists the files of one kind, in no particular order.</summary>
    IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, CancellationToken cancellationToken);

    /// <summary>Returns the file's size, or null when it does not exist.</summary>
    Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken);

    /// <summary>Removes a file; removing a missing file succeeds.</summary>
    Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken);

    /// <summary>The store's catalog of blob ids it holds, or null when it keeps none (see <see cref="IChunkCatalog"/>).</summary>
    IChunkCatalog? Catalog => null;
}
