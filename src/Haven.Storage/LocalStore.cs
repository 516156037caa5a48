using Microsoft.Win32.SafeHandles;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

[assembly: InternalsVisibleTo("Haven.Storage.Tests")]

namespace Haven.Storage;

/// <summary>
/// A repository in a folder of the local file system (or a mounted network share), laid out by
/// <see cref="StoreLayout"/>. Folders are created on the first put into them; a store over a folder that does not
/// exist yet lists nothing and finds nothing.
/// <para>
/// Put is atomic and durable: the bytes go to a temporary file in the destination folder (its name starts with
/// '.', so it is never a valid repository name and listings skip it), the file is flushed to disk, renamed over
/// the final name (rename(2) is atomic within a folder), and the folder is flushed so the rename survives a
/// crash. A crash can leave a temporary file behind but never a half-written visible one.
/// </para>
/// Every method may run on many threads at once; the one shared state, the cache of open pack handles, is thread-safe.
/// </summary>
public sealed partial class LocalStore : IStore
{
    private readonly string _root;

    public LocalStore(string root)
    {
        ArgumentException.ThrowIfNullOrEmpty(root);
        _root = Path.GetFullPath(root);
    }

    public string Location => _root;

    public async Task PutAsync(StoreHandle handle, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        try
        {
            await WriteThroughTempAsync(handle, async (file, ct) =>
            {
                if (!data.IsEmpty)
                {
                    await RandomAccess.WriteAsync(file, data, 0, ct).ConfigureAwait(false);
                }
            }, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (Translate(e, "write", handle) is { } translated)
        {
            throw translated;
        }
    }

    /// <summary>
    /// Moves the file into place when it lies on the same file system (fsync, rename(2), fsync of the folder: no copy),
    /// and copies it through a temporary file otherwise. A repeated call after the file was moved finds it gone and
    /// the destination present, and succeeds: names are write-once, so the destination holds these bytes.
    /// </summary>
    public async Task PutFileAsync(StoreHandle handle, string path, CancellationToken cancellationToken)
    {
        string destination = PathOf(handle);
        string folder = Path.GetDirectoryName(destination)!;
        cancellationToken.ThrowIfCancellationRequested();
        try
        {
            CreateFolder(folder);
            if (!File.Exists(path))
            {
                if (File.Exists(destination))
                {
                    // An earlier attempt moved it; its flush of the folder may be what failed, so flush again.
                    FlushFolder(folder);
                    return;
                }

                throw new StoreException(StoreErrorKind.Permanent, $"the local file {path} that was to be stored as {handle} does not exist");
            }

            using (var file = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read))
            {
                RandomAccess.FlushToDisk(file);
            }

            if (Rename(path, destination) == 0)
            {
                FlushFolder(folder);
                return;
            }

            int errno = Marshal.GetLastPInvokeError();
            if (errno != Haven.Core.Posix.Errno.EXDEV)
            {
                throw new IOException($"cannot move {path} to {destination}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
            }

            await WriteThroughTempAsync(handle, async (target, ct) =>
            {
                using var source = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
                var buffer = Haven.Core.BufferPool.Large.Rent(1024 * 1024);
                try
                {
                    long offset = 0;
                    int n;
                    while ((n = await RandomAccess.ReadAsync(source, buffer.AsMemory(0, 1024 * 1024), offset, ct).ConfigureAwait(false)) > 0)
                    {
                        await RandomAccess.WriteAsync(target, buffer.AsMemory(0, n), offset, ct).ConfigureAwait(false);
                        offset += n;
                    }
                }
                finally
                {
                    Haven.Core.BufferPool.Large.Return(buffer);
                }
            }, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (Translate(e, "write", handle) is { } translated)
        {
            throw translated;
        }
    }

    /// <summary>
    /// The atomic, durable write behind every put: <paramref name="write"/> fills a new temporary file in the
    /// destination folder, which is flushed, renamed over the final name and followed by a flush of the folder.
    /// On any failure the temporary file is removed. Exceptions are not translated here.
    /// </summary>
    private async Task WriteThroughTempAsync(StoreHandle handle, Func<SafeFileHandle, CancellationToken, Task> write, CancellationToken cancellationToken)
    {
        string path = PathOf(handle);
        string folder = Path.GetDirectoryName(path)!;
        string temp = Path.Combine(folder, $".{handle.Name}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}.tmp");
        cancellationToken.ThrowIfCancellationRequested();
        CreateFolder(folder);
        try
        {
            using (var file = File.OpenHandle(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                await write(file, cancellationToken).ConfigureAwait(false);
                RandomAccess.FlushToDisk(file);
            }

            cancellationToken.ThrowIfCancellationRequested();
            File.Move(temp, path, overwrite: true);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }

        FlushFolder(folder);
    }

    public async Task<byte[]> GetAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        string path = PathOf(handle);
        try
        {
            using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            long length = RandomAccess.GetLength(file);
            if (length > Array.MaxLength)
            {
                throw new StoreException(StoreErrorKind.Permanent, $"{handle} in {_root} is {length} bytes, too large to read whole");
            }

            var bytes = new byte[length];
            int read = await ReadFullyAsync(file, 0, bytes, cancellationToken).ConfigureAwait(false);
            if (read != length)
            {
                throw new StoreException(StoreErrorKind.Transient, $"{handle} in {_root} shrank while being read ({read} of {length} bytes)");
            }

            return bytes;
        }
        catch (Exception e) when (Translate(e, "read", handle) is { } translated)
        {
            throw translated;
        }
    }

    public async Task ReadRangeAsync(StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        string path = PathOf(handle);
        try
        {
            try
            {
                await ReadRangeFromAsync(OpenForRange(handle, path), handle, offset, buffer, cancellationToken).ConfigureAwait(false);
            }
            catch (ObjectDisposedException)
            {
                // A shared pack handle was closed (evicted or deleted) while this read started: read with a fresh one.
                var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                await ReadRangeFromAsync((file, RandomAccess.GetLength(file), true), handle, offset, buffer, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (Translate(e, "read", handle) is { } translated)
        {
            throw translated;
        }
    }

    private async Task ReadRangeFromAsync((SafeFileHandle Handle, long Length, bool Owned) open, StoreHandle handle, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        using var release = open.Owned ? open.Handle : null;
        if (offset + buffer.Length > open.Length)
        {
            throw RangePastEnd(handle, offset, buffer.Length, open.Length);
        }

        int read = await ReadFullyAsync(open.Handle, offset, buffer, cancellationToken).ConfigureAwait(false);
        if (read != buffer.Length)
        {
            throw RangePastEnd(handle, offset, buffer.Length, offset + read);
        }
    }

    /// <summary>At most this many pack files stay open for range reads (restore and check read many blobs per pack).</summary>
    private const int MaxOpenPacks = 64;

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, (SafeFileHandle Handle, long Length)> _openPacks = new();

    /// <summary>
    /// A read handle and the file's length. Packs are write-once, so their handles are kept open and shared (reads at
    /// an offset need no per-call open, fstat, lock and close); other files are opened per call and owned by the caller.
    /// </summary>
    private (SafeFileHandle Handle, long Length, bool Owned) OpenForRange(StoreHandle handle, string path)
    {
        if (handle.Kind == FileKind.Pack && _openPacks.TryGetValue(path, out var open))
        {
            return (open.Handle, open.Length, false);
        }

        var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        long length = RandomAccess.GetLength(file);
        if (handle.Kind != FileKind.Pack)
        {
            return (file, length, true);
        }

        if (_openPacks.Count >= MaxOpenPacks)
        {
            CloseOpenPacks(); // simple and rare: the working set of a restore is a few packs at a time
        }

        if (!_openPacks.TryAdd(path, (file, length)))
        {
            return (file, length, true);
        }

        return (file, length, false);
    }

    private void CloseOpenPacks()
    {
        foreach (var path in _openPacks.Keys)
        {
            if (_openPacks.TryRemove(path, out var entry))
            {
                entry.Handle.Dispose(); // a read in progress keeps the handle alive until it ends (SafeHandle)
            }
        }
    }

    public async IAsyncEnumerable<StoreFileInfo> ListAsync(FileKind kind, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        // Directory enumeration is synchronous; one yield keeps a caller's first MoveNextAsync from running it inline
        // on a thread that must not block for long.
        await Task.Yield();
        if (kind == FileKind.Config)
        {
            var info = await StatAsync(StoreHandle.Config, cancellationToken).ConfigureAwait(false);
            if (info is { } found)
            {
                yield return found;
            }

            yield break;
        }

        string folder = Path.Combine(_root, StoreLayout.FolderOf(kind));
        if (kind != FileKind.Pack)
        {
            foreach (var info in ListFolder(kind, folder, expectedPrefix: null))
            {
                cancellationToken.ThrowIfCancellationRequested();
                yield return info;
            }

            yield break;
        }

        // Packs sit one level down, in folders named by the first two hex digits of their names.
        foreach (string sub in EnumerateOrEmpty(folder, directories: true))
        {
            string prefix = Path.GetFileName(sub);
            if (prefix.Length != 2 || !StoreLayout.IsValidName(prefix + new string('0', 62)))
            {
                continue;
            }

            foreach (var info in ListFolder(kind, sub, prefix))
            {
                cancellationToken.ThrowIfCancellationRequested();
                yield return info;
            }
        }
    }

    public Task<StoreFileInfo?> StatAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        string path = PathOf(handle);
        cancellationToken.ThrowIfCancellationRequested();
        try
        {
            var info = new FileInfo(path);
            return Task.FromResult<StoreFileInfo?>(info.Exists ? new StoreFileInfo(handle, info.Length) : null);
        }
        catch (FileNotFoundException)
        {
            // Deleted between the existence check and reading its length.
            return Task.FromResult<StoreFileInfo?>(null);
        }
        catch (Exception e) when (Translate(e, "inspect", handle) is { } translated)
        {
            throw translated;
        }
    }

    public Task DeleteAsync(StoreHandle handle, CancellationToken cancellationToken)
    {
        string path = PathOf(handle);
        cancellationToken.ThrowIfCancellationRequested();
        if (_openPacks.TryRemove(path, out var open))
        {
            open.Handle.Dispose();
        }

        try
        {
            File.Delete(path); // a missing file is fine; a missing folder throws DirectoryNotFoundException
        }
        catch (DirectoryNotFoundException)
        {
        }
        catch (Exception e) when (Translate(e, "delete", handle) is { } translated)
        {
            throw translated;
        }

        return Task.CompletedTask;
    }

    public ValueTask DisposeAsync()
    {
        CloseOpenPacks();
        return ValueTask.CompletedTask;
    }

    private string PathOf(StoreHandle handle)
    {
        string relative = StoreLayout.PathOf(handle); // validates the name
        if (Path.DirectorySeparatorChar != '/')
        {
            relative = relative.Replace('/', Path.DirectorySeparatorChar);
        }

        return Path.Combine(_root, relative);
    }

    private IEnumerable<StoreFileInfo> ListFolder(FileKind kind, string folder, string? expectedPrefix)
    {
        foreach (string path in EnumerateOrEmpty(folder, directories: false))
        {
            string name = Path.GetFileName(path);
            if (!StoreLayout.IsValidName(name) || (expectedPrefix is not null && !name.StartsWith(expectedPrefix, StringComparison.Ordinal)))
            {
                continue; // temporary files, and anything a person put there
            }

            long size;
            try
            {
                var info = new FileInfo(path);
                if (!info.Exists)
                {
                    continue; // deleted since the folder was read
                }

                size = info.Length;
            }
            catch (FileNotFoundException)
            {
                continue;
            }

            yield return new StoreFileInfo(new StoreHandle(kind, name), size);
        }
    }

    private IEnumerable<string> EnumerateOrEmpty(string folder, bool directories)
    {
        string[] entries;
        try
        {
            entries = directories ? Directory.GetDirectories(folder) : Directory.GetFiles(folder);
        }
        catch (DirectoryNotFoundException)
        {
            return [];
        }
        catch (Exception e) when (Translate(e, "list", null) is { } translated)
        {
            throw translated;
        }

        return entries;
    }

    /// <summary>Creates <paramref name="folder"/> and any missing parents, flushing each parent that gained an entry.</summary>
    private static void CreateFolder(string folder)
    {
        if (Directory.Exists(folder))
        {
            return;
        }

        var missing = new Stack<string>();
        for (string? f = folder; f is not null && !Directory.Exists(f); f = Path.GetDirectoryName(f))
        {
            missing.Push(f);
        }

        while (missing.TryPop(out string? f))
        {
            Directory.CreateDirectory(f); // succeeds when another thread created it first
            if (Path.GetDirectoryName(f) is { } parent)
            {
                FlushFolder(parent);
            }
        }
    }

    private static async Task<int> ReadFullyAsync(Microsoft.Win32.SafeHandles.SafeFileHandle file, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(file, buffer[total..], offset + total, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                break;
            }

            total += n;
        }

        return total;
    }

    private StoreException RangePastEnd(StoreHandle handle, long offset, int count, long length) =>
        new(StoreErrorKind.Permanent, $"cannot read {count} bytes at offset {offset} of {handle} in {_root}: the file has {length} bytes");

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A leftover temporary file is harmless: listings skip it.
        }
    }

    /// <summary>
    /// Flushes a folder's entries to disk (fsync on the folder), so a rename or a new entry in it survives a crash.
    /// .NET cannot open a folder as a file, hence open(2) directly. Windows has no equivalent and needs none for NTFS.
    /// </summary>
    private static void FlushFolder(string folder)
    {
        if (OperatingSystem.IsWindows())
        {
            return;
        }

        int fd = Open(folder, OpenReadOnly | OpenDirectory | OpenCloseOnExec);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot open folder {folder} to flush it: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
        }

        try
        {
            // Some file systems (certain FUSE and network ones) refuse fsync on folders: EINVAL there means "not
            // supported", and the rename is as durable as that file system makes it.
            if (Fsync(fd) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno != Einval)
                {
                    throw new IOException($"cannot flush folder {folder}: {Marshal.GetPInvokeErrorMessage(errno)}", errno);
                }
            }
        }
        finally
        {
            _ = Close(fd);
        }
    }

    // Linux values; macOS differs for O_DIRECTORY/O_CLOEXEC, and so is handled by its own constants.
    private static int OpenReadOnly => 0;

    private static int OpenDirectory => OperatingSystem.IsMacOS() ? 0x100000 : 0x10000;

    private static int OpenCloseOnExec => OperatingSystem.IsMacOS() ? 0x1000000 : 0x80000;

    private const int Einval = 22;

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "rename", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Rename(string from, string to);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);

    /// <summary>
    /// Turns a file-system exception into a <see cref="StoreException"/>, or returns null for exceptions that pass
    /// through unchanged (cancellation, argument errors, and <see cref="StoreException"/>s raised above).
    /// </summary>
    private StoreException? Translate(Exception e, string verb, StoreHandle? handle)
    {
        string what = handle is { } h ? $"{verb} {h} in {_root}" : $"{verb} {_root}";
        switch (e)
        {
            case StoreException or OperationCanceledException or ArgumentException:
                return null;
            case FileNotFoundException or DirectoryNotFoundException:
                return handle is { } missing
                    ? new StoreException(StoreErrorKind.NotFound, $"{StoreLayout.PathOf(missing)} does not exist in {_root}", e)
                    : new StoreException(StoreErrorKind.NotFound, $"cannot {what}: {e.Message}", e);
            default:
                return StoreErrors.Translate(e, $"cannot {what}: {e.Message}");
        }
    }
}
