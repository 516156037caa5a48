using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace Haven.Storage.Tests;

public sealed class LocalStoreTests : StoreConformanceTests
{
    private readonly ITestOutputHelper _output;
    private readonly DirectoryInfo _temp = Directory.CreateTempSubdirectory("haven-localstore-");

    public LocalStoreTests(ITestOutputHelper output)
    {
        _output = output;
    }

    // The repository folder does not exist yet: the store creates folders on the first put.
    private string Root => Path.Combine(_temp.FullName, "repo");

    protected override Task<IStore?> CreateStoreAsync() => Task.FromResult<IStore?>(new LocalStore(Root));

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        _temp.Delete(recursive: true);
    }

    [Fact]
    public async Task PutFile_OnTheSameFileSystem_MovesTheFileIntoPlace()
    {
        var handle = NewHandle(FileKind.Pack);
        var data = RandomBytes(100_000);
        string spool = Path.Combine(_temp.FullName, "spool.tmp");
        await File.WriteAllBytesAsync(spool, data);

        await Store.PutFileAsync(handle, spool, None);

        Assert.False(File.Exists(spool));
        Assert.Equal(data, await File.ReadAllBytesAsync(Path.Combine(Root, StoreLayout.PathOf(handle))));
    }

    [Fact]
    public async Task PutFile_FromAnotherFileSystem_CopiesAndLeavesTheSource()
    {
        // /dev/shm is a tmpfs on Linux: another file system than the temp folder, so rename(2) fails with EXDEV.
        if (!Directory.Exists("/dev/shm") || Haven.Core.Posix.Posix.LStat("/dev/shm"u8.ToArray()).Device == Haven.Core.Posix.Posix.LStat(System.Text.Encoding.UTF8.GetBytes(_temp.FullName)).Device)
        {
            _output.WriteLine("no second file system here; the copy path is not exercised");
            return;
        }

        var handle = NewHandle(FileKind.Pack);
        var data = RandomBytes(3 << 20);
        string spool = Path.Combine("/dev/shm", $"haven-test-{Guid.NewGuid():N}");
        await File.WriteAllBytesAsync(spool, data);
        try
        {
            await Store.PutFileAsync(handle, spool, None);

            Assert.True(File.Exists(spool));
            Assert.Equal(data, await Store.GetAsync(handle, None));
            Assert.Empty(Directory.EnumerateFiles(Path.GetDirectoryName(Path.Combine(Root, StoreLayout.PathOf(handle)))!, ".*"));
        }
        finally
        {
            File.Delete(spool);
        }
    }

    [Fact]
    public async Task Files_AreLaidOutAsTheFormatSays()
    {
        var pack = NewHandle(FileKind.Pack);
        var snapshot = NewHandle(FileKind.Snapshot);
        await Store.PutAsync(pack, new byte[] { 1 }, None);
        await Store.PutAsync(snapshot, new byte[] { 2 }, None);
        await Store.PutAsync(StoreHandle.Config, new byte[] { 3 }, None);

        Assert.Equal([1], File.ReadAllBytes(Path.Combine(Root, "data", pack.Name[..2], pack.Name)));
        Assert.Equal([2], File.ReadAllBytes(Path.Combine(Root, "snapshots", snapshot.Name)));
        Assert.Equal([3], File.ReadAllBytes(Path.Combine(Root, "config")));
        Assert.Equal(Path.GetFullPath(Root), Store.Location);
    }

    [Fact]
    public async Task Put_LeavesNoTemporaryFileBehind()
    {
        var handle = NewHandle(FileKind.Index);
        await Store.PutAsync(handle, RandomBytes(10_000), None);

        Assert.Equal([handle.Name], Directory.GetFiles(Path.Combine(Root, "index")).Select(Path.GetFileName));
    }

    [Fact]
    public async Task AnInterruptedPut_LeavesNoVisibleFile()
    {
        // What a crash between write and rename leaves: a temporary file next to where the file would be.
        var pack = NewHandle(FileKind.Pack);
        var snapshot = NewHandle(FileKind.Snapshot);
        string packFolder = Path.Combine(Root, "data", pack.Name[..2]);
        Directory.CreateDirectory(packFolder);
        Directory.CreateDirectory(Path.Combine(Root, "snapshots"));
        File.WriteAllBytes(Path.Combine(packFolder, $".{pack.Name}.0a1b2c3d4e5f.tmp"), RandomBytes(100));
        File.WriteAllBytes(Path.Combine(Root, "snapshots", $".{snapshot.Name}.0a1b2c3d4e5f.tmp"), RandomBytes(100));

        Assert.Empty(await ListAsync(FileKind.Pack));
        Assert.Empty(await ListAsync(FileKind.Snapshot));
        Assert.Null(await Store.StatAsync(pack, None));
        var e = await Assert.ThrowsAsync<StoreException>(() => Store.GetAsync(snapshot, None));
        Assert.Equal(StoreErrorKind.NotFound, e.Kind);

        // Writing the file afterwards works, and the leftover stays invisible.
        await Store.PutAsync(pack, new byte[] { 42 }, None);
        Assert.Equal([new StoreFileInfo(pack, 1)], await ListAsync(FileKind.Pack));
    }

    [Fact]
    public async Task List_SkipsFilesThatAreNotRepositoryFiles()
    {
        var pack = NewHandle(FileKind.Pack);
        var other = NewHandle(FileKind.Pack);
        await Store.PutAsync(pack, new byte[] { 1 }, None);
        string folder = Path.Combine(Root, "data", pack.Name[..2]);
        File.WriteAllText(Path.Combine(folder, "README"), "hello");
        File.WriteAllText(Path.Combine(folder, pack.Name.ToUpperInvariant()), "upper case");
        string wrongFolder = Path.Combine(Root, "data", other.Name[..2] == "00" ? "01" : "00");
        Directory.CreateDirectory(wrongFolder);
        File.WriteAllText(Path.Combine(wrongFolder, other.Name), "misplaced pack");
        Directory.CreateDirectory(Path.Combine(Root, "data", "not-hex"));
        File.WriteAllText(Path.Combine(Root, "data", "not-hex", other.Name), "in a foreign folder");
        Directory.CreateDirectory(Path.Combine(Root, "keys", NewHandle(FileKind.Key).Name)); // a folder with a valid name

        Assert.Equal([new StoreFileInfo(pack, 1)], await ListAsync(FileKind.Pack));
        Assert.Empty(await ListAsync(FileKind.Key));
    }

    [Fact]
    public async Task AStoreOverAMissingFolder_IsEmpty()
    {
        Assert.False(Directory.Exists(Root));

        foreach (var kind in Enum.GetValues<FileKind>())
        {
            Assert.Empty(await ListAsync(kind));
        }

        Assert.Null(await Store.StatAsync(StoreHandle.Config, None));
        await Store.DeleteAsync(NewHandle(FileKind.Pack), None);
        Assert.False(Directory.Exists(Root));
    }

    [Fact]
    public async Task Put_WithACancelledToken_WritesNothing()
    {
        var handle = NewHandle(FileKind.Pack);
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Store.PutAsync(handle, RandomBytes(10), cancelled.Token));

        Assert.Null(await Store.StatAsync(handle, None));
    }

    [Fact]
    public async Task Put_OnAFullDisk_FailsWithNoSpace_AndLeavesNothing()
    {
        using var mount = TmpfsMount.TryCreate(Path.Combine(_temp.FullName, "small"), "size=1m", _output);
        if (mount is null) return;
        await using var store = new LocalStore(mount.Path);
        var handle = NewHandle(FileKind.Pack);

        var e = await Assert.ThrowsAsync<StoreException>(() => store.PutAsync(handle, RandomBytes(2 << 20), None));

        Assert.Equal(StoreErrorKind.NoSpace, e.Kind);
        Assert.Null(await store.StatAsync(handle, None));
        Assert.Empty(Directory.GetFiles(Path.Combine(mount.Path, "data", handle.Name[..2])));

        // Space is back once the failed put is gone: a small file fits.
        await store.PutAsync(handle, RandomBytes(1000), None);
    }

    [Fact]
    public async Task Put_OnAReadOnlyFileSystem_FailsWithAccessDenied()
    {
        using var mount = TmpfsMount.TryCreate(Path.Combine(_temp.FullName, "readonly"), "size=1m,ro", _output);
        if (mount is null) return;
        await using var store = new LocalStore(mount.Path);

        var e = await Assert.ThrowsAsync<StoreException>(() => store.PutAsync(NewHandle(FileKind.Key), new byte[] { 1 }, None));

        Assert.Equal(StoreErrorKind.AccessDenied, e.Kind);
    }

    [Fact]
    public void IoErrors_AreClassifiedByErrno()
    {
        if (OperatingSystem.IsWindows()) return;
        Assert.Equal(StoreErrorKind.NoSpace, StoreErrors.Classify(new IOException("x", 28)));
        Assert.Equal(StoreErrorKind.NoSpace, StoreErrors.Classify(new IOException("x", 122)));
        Assert.Equal(StoreErrorKind.AccessDenied, StoreErrors.Classify(new IOException("x", 30)));
        Assert.Equal(StoreErrorKind.Transient, StoreErrors.Classify(new IOException("x", 5)));
        Assert.Equal(StoreErrorKind.Permanent, StoreErrors.Classify(new IOException("x", 36)));
        Assert.Equal(StoreErrorKind.NoSpace, StoreErrors.Classify(new IOException("Failed to create '/x' with allocation size '9' because the disk was full.")));
    }

    /// <summary>A tmpfs mounted for one test; needs root (or CAP_SYS_ADMIN). Unmounted on dispose.</summary>
    private sealed class TmpfsMount : IDisposable
    {
        private TmpfsMount(string path) => Path = path;

        public string Path { get; }

        public static TmpfsMount? TryCreate(string path, string options, ITestOutputHelper output)
        {
            if (!OperatingSystem.IsLinux())
            {
                output.WriteLine("not Linux: the tmpfs test does nothing");
                return null;
            }

            Directory.CreateDirectory(path);
            var (code, error) = Run("mount", "-t", "tmpfs", "-o", options, "haven-test", path);
            if (code != 0)
            {
                output.WriteLine($"cannot mount a tmpfs here ({error.Trim()}): the test does nothing");
                return null;
            }

            return new TmpfsMount(path);
        }

        public void Dispose() => Run("umount", "-l", Path);

        private static (int Code, string Error) Run(string file, params string[] arguments)
        {
            try
            {
                var start = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true };
                foreach (string argument in arguments)
                {
                    start.ArgumentList.Add(argument);
                }

                using var process = Process.Start(start)!;
                string error = process.StandardError.ReadToEnd();
                process.WaitForExit();
                return (process.ExitCode, error);
            }
            catch (System.ComponentModel.Win32Exception e)
            {
                return (-1, e.Message);
            }
        }
    }
}
