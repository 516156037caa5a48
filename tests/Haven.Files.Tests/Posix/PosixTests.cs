using System.Diagnostics;
using Haven.Core.Posix;
using Haven.Testing;
using Xunit;
using Xunit.Abstractions;

namespace Haven.Files.Tests;

public sealed class PosixTests : IDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly string _dir;
    private readonly byte[] _root;

    public PosixTests(ITestOutputHelper output)
    {
        _output = output;
        _dir = Directory.CreateTempSubdirectory("haven-posix-").FullName;
        _root = PosixPath.FromString(_dir);
    }

    // C# has no octal literals.
    private static uint Octal(string digits) => Convert.ToUInt32(digits, 8);

    public void Dispose() => TestTree.DeleteTree(_dir);

    private byte[] P(string relative) => PosixPath.Join(_root, PosixPath.FromString(relative));

    private byte[] P(byte[] name) => PosixPath.Join(_root, name);

    private static void Write(byte[] path, ReadOnlySpan<byte> content)
    {
        using var file = Posix.CreateFile(path, Octal("0644"), truncate: true);
        Posix.PWriteAll(file, content, 0);
    }

    private static byte[] Read(byte[] path)
    {
        using var file = Posix.OpenRead(path);
        var content = new byte[Posix.FStat(file).Size];
        int done = 0;
        while (done < content.Length)
        {
            int n = Posix.PRead(file, content.AsSpan(done), done);
            Assert.NotEqual(0, n);
            done += n;
        }

        return content;
    }

    [Fact]
    public void FileTypeNumbers_AreFrozen()
    {
        // Persisted in snapshots.
        Assert.Equal(
            [0, 1, 2, 3, 4, 5, 6, 7],
            new[] { FileType.Unknown, FileType.Regular, FileType.Directory, FileType.Symlink, FileType.CharDevice, FileType.BlockDevice, FileType.Fifo, FileType.Socket }.Select(t => (int)t));
    }

    [Fact]
    public void NonUtf8Names_AreCreatedAndListedBackByteExact()
    {
        byte[] fileName = [0x66, 0xff, 0xfe];
        byte[] dirName = [0xfe, 0xff, (byte)'d'];
        Write(P(fileName), [1, 2, 3]);
        Posix.MakeDirectory(P(dirName), Octal("0755"));
        Write(PosixPath.Join(P(dirName), fileName), [4]);

        var names = Posix.ReadDirectory(_root);

        Assert.Equal(2, names.Count);
        Assert.Contains(names, n => n.AsSpan().SequenceEqual(fileName));
        Assert.Contains(names, n => n.AsSpan().SequenceEqual(dirName));
        Assert.Equal([1, 2, 3], Read(P(fileName)));
        Assert.Equal(FileType.Directory, Posix.LStat(P(dirName)).Type);
        Assert.Equal(fileName, Assert.Single(Posix.ReadDirectory(P(dirName))));
        Assert.Equal("f\\xff\\xfe", PosixPath.ToDisplay(fileName));
    }

    [Fact]
    public void Name_Of255Bytes_Works_And256BytesFailsWithNameTooLong()
    {
        // A multi-byte character at the end: the limit is bytes, not characters.
        byte[] name = [.. Enumerable.Repeat((byte)'a', 252), .. "é"u8, (byte)'z'];
        Assert.Equal(255, name.Length);
        Write(P(name), [42]);

        Assert.Equal(name, Assert.Single(Posix.ReadDirectory(_root)));
        Assert.Equal(1, Posix.LStat(P(name)).Size);
        Assert.True(PosixPath.IsValidName(name));

        byte[] tooLong = [.. name, (byte)'x'];
        Assert.False(PosixPath.IsValidName(tooLong));
        var e = Assert.Throws<PosixException>(() => Posix.CreateFile(P(tooLong), Octal("0644"), false));
        Assert.Equal(Errno.ENAMETOOLONG, e.Errno);
    }

    [Fact]
    public void LStat_ReportsFileDirectorySymlinkAndFifo()
    {
        Write(P("file"), new byte[5000]);
        Posix.Chmod(P("file"), Octal("0640"));
        Posix.MakeDirectory(P("dir"), Octal("0755"));
        Posix.Chmod(P("dir"), Octal("0751"));
        Posix.Symlink(PosixPath.FromString("file"), P("link"));
        Posix.MakeNode(P("fifo"), FileType.Fifo, Octal("0600"), 0);

        var file = Posix.LStat(P("file"));
        Assert.Equal(FileType.Regular, file.Type);
        Assert.Equal(Octal("0640"), file.Mode);
        Assert.Equal(5000, file.Size);
        Assert.Equal(1ul, file.Links);
        Assert.True(file.Inode != 0);
        Assert.True(file.Blocks512 > 0);
        Assert.True(file.ModifyTimeNs > 1_600_000_000L * 1_000_000_000);
        Assert.True(file.ChangeTimeNs >= file.ModifyTimeNs);
        Assert.Equal(FileType.Directory, Posix.LStat(P("dir")).Type);
        Assert.Equal(Octal("0751"), Posix.LStat(P("dir")).Mode);

        var link = Posix.LStat(P("link"));
        Assert.Equal(FileType.Symlink, link.Type);
        Assert.Equal(4, link.Size); // the target's length
        Assert.NotEqual(file.Inode, link.Inode);
        Assert.Equal("file"u8.ToArray(), Posix.ReadLink(P("link")));

        Assert.Equal(FileType.Fifo, Posix.LStat(P("fifo")).Type);

        // Cross-checks with the kernel's view through coreutils stat.
        Assert.Equal(Run("stat", "-c", "%i %u %g %h %b %d", _dir + "/file").Trim(),
            $"{file.Inode} {file.Uid} {file.Gid} {file.Links} {file.Blocks512} {file.Device}");
        Assert.Equal(file.Device, Posix.LStat(_root).Device);
    }

    [Fact]
    public void FStat_MatchesLStat()
    {
        Write(P("file"), new byte[123]);
        using var handle = Posix.OpenRead(P("file"));
        var viaHandle = Posix.FStat(handle);
        var viaPath = Posix.LStat(P("file"));
        Assert.Equal(viaPath with { AccessTimeNs = 0 }, viaHandle with { AccessTimeNs = 0 });
    }

    [Fact]
    public void LStat_DoesNotAllocate()
    {
        // Called once per file of a backup: the result is a struct, the path is marshalled on the stack.
        Write(P("file"), [1]);
        byte[] path = P("file");
        byte[] missing = P("missing");
        Posix.LStat(path);
        Posix.TryLStat(missing, out _, out _);

        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++)
        {
            Posix.LStat(path);
            Posix.TryLStat(missing, out _, out _);
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void TryLStat_ReturnsErrnoForMissingPath()
    {
        Assert.False(Posix.TryLStat(P("missing"), out var stat, out int errno));
        Assert.Equal(Errno.ENOENT, errno);
        Assert.Equal(default, stat);
    }

    [Fact]
    public void SetTimes_RoundTripsNanoseconds_OnFilesDirectoriesAndSymlinks()
    {
        Write(P("file"), [1]);
        Posix.MakeDirectory(P("dir"), Octal("0755"));
        Posix.Symlink(PosixPath.FromString("nowhere"), P("link"));
        long access = 1_111_111_111_987_654_321;
        long modify = 1_234_567_891_123_456_789;

        foreach (string name in new[] { "file", "dir", "link" })
        {
            Posix.SetTimes(P(name), access, modify);
            var stat = Posix.LStat(P(name));
            Assert.Equal(modify, stat.ModifyTimeNs);
            Assert.Equal(access, stat.AccessTimeNs);
        }

        // Before 1970: negative seconds with a positive nanosecond part.
        Posix.SetTimes(P("file"), -1_500_000_001, -1_500_000_001);
        Assert.Equal(-1_500_000_001, Posix.LStat(P("file")).ModifyTimeNs);
    }

    [Fact]
    public void Xattrs_CanBeSetListedAndRead()
    {
        byte[]? dir = FindXattrDirectory();
        if (dir is null)
        {
            _output.WriteLine("no file system with user xattrs found; skipped");
            return;
        }

        byte[] file = PosixPath.Join(dir, "xattr-file"u8);
        Write(file, [1]);
        try
        {
            Assert.DoesNotContain(Posix.ListXattrs(file), n => n.AsSpan().StartsWith("user."u8));
            Assert.Null(Posix.GetXattr(file, "user.missing"u8.ToArray()));

            byte[] big = new byte[3000];
            new Random(7).NextBytes(big);
            Posix.SetXattr(file, "user.small"u8.ToArray(), "hello"u8.ToArray());
            Posix.SetXattr(file, "user.empty"u8.ToArray(), []);
            Posix.SetXattr(file, "user.big"u8.ToArray(), big);
            Posix.SetXattr(file, [.. "user.bin-"u8, 0xff], [0, 0, 1]);

            var names = Posix.ListXattrs(file).Where(n => n.AsSpan().StartsWith("user."u8)).Select(Convert.ToHexString).Order().ToList();
            var expected = new[] { "user.small"u8.ToArray(), "user.empty"u8.ToArray(), "user.big"u8.ToArray(), [.. "user.bin-"u8, 0xff] }
                .Select(Convert.ToHexString).Order().ToList();
            Assert.Equal(expected, names);
            Assert.Equal("hello"u8.ToArray(), Posix.GetXattr(file, "user.small"u8.ToArray()));
            Assert.Empty(Assert.IsType<byte[]>(Posix.GetXattr(file, "user.empty"u8.ToArray())));
            Assert.Equal(big, Posix.GetXattr(file, "user.big"u8.ToArray()));
            Assert.Equal([0, 0, 1], Posix.GetXattr(file, [.. "user.bin-"u8, 0xff])!);
        }
        finally
        {
            Posix.Unlink(file);
            if (!dir.AsSpan().SequenceEqual(_root))
            {
                Posix.RemoveDirectory(dir);
            }
        }
    }

    // /tmp may be a tmpfs without user xattrs on older kernels: fall back to /var/tmp, then the build output.
    private byte[]? FindXattrDirectory()
    {
        foreach (string candidate in new[] { _dir, "/var/tmp", AppContext.BaseDirectory })
        {
            byte[] dir = candidate == _dir
                ? _root
                : PosixPath.Join(PosixPath.FromString(candidate.TrimEnd('/')), PosixPath.FromString($"haven-xattr-{Guid.NewGuid():N}"));
            if (candidate != _dir)
            {
                try
                {
                    Posix.MakeDirectory(dir, Octal("0700"));
                }
                catch (PosixException)
                {
                    continue;
                }
            }

            byte[] probe = PosixPath.Join(dir, "probe"u8);
            Write(probe, []);
            try
            {
                Posix.SetXattr(probe, "user.probe"u8.ToArray(), [1]);
                return dir;
            }
            catch (PosixException e) when (e.Errno is Errno.EOPNOTSUPP or Errno.EPERM)
            {
                _output.WriteLine($"{candidate}: {e.Message}");
                if (candidate != _dir)
                {
                    Posix.Unlink(probe);
                    Posix.RemoveDirectory(dir);
                }
            }
            finally
            {
                if (Posix.TryLStat(probe, out _, out _))
                {
                    Posix.Unlink(probe);
                }
            }
        }

        return null;
    }

    [Fact]
    public void ListXattrs_OnSymlink_DoesNotFollowIt()
    {
        Write(P("file"), [1]);
        Posix.Symlink("file"u8.ToArray(), P("link"));
        if (Posix.ListXattrs(P("file")).Count == 0)
        {
            try
            {
                Posix.SetXattr(P("file"), "user.a"u8.ToArray(), [1]);
            }
            catch (PosixException e) when (e.Errno == Errno.EOPNOTSUPP)
            {
                return;
            }
        }

        Assert.DoesNotContain(Posix.ListXattrs(P("link")), n => n.AsSpan().SequenceEqual("user.a"u8));
        Assert.Null(Posix.GetXattr(P("link"), "user.a"u8.ToArray()));
    }

    [Fact]
    public void SparseFile_SeekDataAndSeekHole_FindTheDataRegion()
    {
        const long Size = 8 << 20;
        const long DataAt = 4 << 20;
        using (var file = Posix.CreateFile(P("sparse"), Octal("0644"), truncate: true))
        {
            Posix.FTruncate(file, Size);
            Posix.PWriteAll(file, Enumerable.Repeat((byte)7, 4096).ToArray(), DataAt);
            Posix.FSync(file);
        }

        using var f = Posix.OpenRead(P("sparse"));
        var stat = Posix.FStat(f);
        Assert.Equal(Size, stat.Size);
        Assert.True(stat.Blocks512 * 512 < Size / 4, $"allocated {stat.Blocks512 * 512} bytes");

        long data = Posix.SeekData(f, 0);
        if (data == 0)
        {
            _output.WriteLine("file system does not report holes; skipped");
            return;
        }

        Assert.Equal(DataAt, data);
        Assert.Equal(0, Posix.SeekHole(f, 0));
        Assert.Equal(DataAt + 4096, Posix.SeekHole(f, DataAt));
        Assert.Equal(-1, Posix.SeekData(f, DataAt + 4096));
        Assert.Equal(Size - 1, Posix.SeekHole(f, Size - 1));
        Assert.Equal(-1, Posix.SeekHole(f, Size));

        Span<byte> buffer = stackalloc byte[8];
        Assert.Equal(8, Posix.PRead(f, buffer, DataAt));
        Assert.Equal(7, buffer[0]);
        Assert.Equal(8, Posix.PRead(f, buffer, 0));
        Assert.Equal(0, buffer[0]);
        Assert.Equal(0, Posix.PRead(f, buffer, Size));
        Posix.FAdviseSequential(f);
        Posix.FAdviseDontNeed(f, 0, 0);
    }

    [Fact]
    public void MakeNode_CreatesFifoAndSocket()
    {
        Posix.MakeNode(P("fifo"), FileType.Fifo, Octal("0640"), 0);
        Posix.MakeNode(P("socket"), FileType.Socket, Octal("0600"), 0);
        Posix.Chmod(P("fifo"), Octal("0640"));

        Assert.Equal(FileType.Fifo, Posix.LStat(P("fifo")).Type);
        Assert.Equal(Octal("0640"), Posix.LStat(P("fifo")).Mode);
        Assert.Equal(FileType.Socket, Posix.LStat(P("socket")).Type);
        Assert.Throws<ArgumentException>(() => Posix.MakeNode(P("regular"), FileType.Regular, Octal("0644"), 0));
    }

    [Fact]
    public void MakeNode_CreatesCharDevice_AsRoot()
    {
        if (!Posix.IsRoot)
        {
            var e = Assert.Throws<PosixException>(() => Posix.MakeNode(P("null"), FileType.CharDevice, Octal("0644"), Posix.MakeDevice(1, 3)));
            Assert.Equal(Errno.EPERM, e.Errno);
            return;
        }

        Posix.MakeNode(P("null"), FileType.CharDevice, Octal("0644"), Posix.MakeDevice(1, 3));

        var stat = Posix.LStat(P("null"));
        Assert.Equal(FileType.CharDevice, stat.Type);
        Assert.Equal((1ul, 3ul), Posix.SplitDevice(stat.RDev));
        Assert.Equal(Posix.LStat("/dev/null"u8.ToArray()).RDev, stat.RDev);
    }

    [Fact]
    public void DeviceNumbers_UseGlibcEncoding()
    {
        // gnu_dev_makedev(0x12345, 0x6789ab), computed by a C program against glibc 2.36.
        Assert.Equal(0x12006789345abUL, Posix.MakeDevice(0x12345, 0x6789ab));
        Assert.Equal((0x12345ul, 0x6789abul), Posix.SplitDevice(0x12006789345abUL));
        Assert.Equal(0x103UL, Posix.MakeDevice(1, 3));
        Assert.Equal((8ul, 1ul), Posix.SplitDevice(Posix.MakeDevice(8, 1)));
    }

    [Fact]
    public void HardLinks_ShareInodeAndCountLinks()
    {
        Write(P("a"), [1, 2]);
        Posix.Link(P("a"), P("b"));

        var a = Posix.LStat(P("a"));
        var b = Posix.LStat(P("b"));
        Assert.Equal(a.Inode, b.Inode);
        Assert.Equal(2ul, a.Links);
        Assert.Equal(2ul, b.Links);

        var e = Assert.Throws<PosixException>(() => Posix.Link(P("a"), P("b")));
        Assert.Equal(Errno.EEXIST, e.Errno);
        Assert.Equal(P("a"), e.Path);
        Assert.Equal(P("b"), e.OtherPath);
    }

    [Fact]
    public void CreateFile_RefusesToFollowSymlinkAtFinalComponent()
    {
        Write(P("target"), [1, 2, 3]);
        Posix.Symlink("target"u8.ToArray(), P("link"));
        Posix.Symlink("created-through-link"u8.ToArray(), P("dangling"));

        var e = Assert.Throws<PosixException>(() => Posix.CreateFile(P("link"), Octal("0644"), truncate: true));
        Assert.Equal(Errno.ELOOP, e.Errno);
        e = Assert.Throws<PosixException>(() => Posix.CreateFile(P("dangling"), Octal("0644"), truncate: false));
        Assert.Equal(Errno.ELOOP, e.Errno);
        e = Assert.Throws<PosixException>(() => Posix.OpenRead(P("link")));
        Assert.Equal(Errno.ELOOP, e.Errno);
        e = Assert.Throws<PosixException>(() => Posix.OpenWrite(P("link")));
        Assert.Equal(Errno.ELOOP, e.Errno);

        Assert.Equal([1, 2, 3], Read(P("target")));
        Assert.False(Posix.TryLStat(P("created-through-link"), out _, out _));
    }

    [Fact]
    public void ErrorMessage_ContainsOperationPathAndErrnoText()
    {
        byte[] missing = [.. P("missing-"), 0xff];

        var e = Assert.Throws<PosixException>(() => Posix.LStat(missing));

        Assert.Equal(Errno.ENOENT, e.Errno);
        Assert.Equal("statx", e.Operation);
        Assert.Equal(missing, e.Path);
        Assert.Equal($"statx {_dir}/missing-\\xff: No such file or directory", e.Message);
        Assert.IsAssignableFrom<IOException>(e);

        e = Assert.Throws<PosixException>(() => Posix.MakeDirectory(_root, Octal("0755")));
        Assert.Equal(Errno.EEXIST, e.Errno);
        Assert.Contains("File exists", e.Message);
        Assert.Contains(_dir, e.Message);
    }

    [Fact]
    public void Paths_WithNulByte_AreRejected()
    {
        Assert.Throws<ArgumentException>(() => Posix.LStat([.. P("a"), 0, (byte)'b']));
    }

    [Fact]
    public void LongPaths_BeyondStackBuffer_Work_AndBeyondKernelLimitFailCleanly()
    {
        // 20 levels of 100-byte names: about 2 KB, past the 512-byte stack buffer.
        byte[] path = _root;
        for (int i = 0; i < 20; i++)
        {
            path = PosixPath.Join(path, PosixPath.FromString(new string((char)('a' + i), 100)));
            Posix.MakeDirectory(path, Octal("0755"));
        }

        byte[] file = PosixPath.Join(path, "f"u8);
        Write(file, [9]);
        Assert.True(file.Length > 2000);
        Assert.Equal(1, Posix.LStat(file).Size);
        Assert.Equal("f"u8.ToArray(), Assert.Single(Posix.ReadDirectory(path)));

        // Past 4096 bytes the kernel says ENAMETOOLONG.
        byte[] tooDeep = path;
        while (tooDeep.Length <= 4200)
        {
            tooDeep = PosixPath.Join(tooDeep, PosixPath.FromString(new string('z', 200)));
        }

        var e = Assert.Throws<PosixException>(() => Posix.LStat(tooDeep));
        Assert.Equal(Errno.ENAMETOOLONG, e.Errno);
        e = Assert.Throws<PosixException>(() => Posix.MakeDirectory(tooDeep, Octal("0755")));
        Assert.Equal(Errno.ENAMETOOLONG, e.Errno);
    }

    [Fact]
    public void ReadLink_ReturnsLongAndNonUtf8TargetsByteExact()
    {
        byte[] longTarget = [.. Enumerable.Range(0, 3000).Select(i => (byte)('a' + i % 26))];
        byte[] oddTarget = [(byte)'.', (byte)'/', 0xff, 0xfe, (byte)'x'];
        Posix.Symlink(longTarget, P("long"));
        Posix.Symlink(oddTarget, P("odd"));

        Assert.Equal(longTarget, Posix.ReadLink(P("long")));
        Assert.Equal(oddTarget, Posix.ReadLink(P("odd")));
        Assert.Equal(3000, Posix.LStat(P("long")).Size);

        var e = Assert.Throws<PosixException>(() => Posix.ReadLink(_root));
        Assert.Equal(Errno.EINVAL, e.Errno);
    }

    [Fact]
    public void ReadDirectory_Lists100kEntries()
    {
        const int Count = 100_000;
        byte[] dir = P("many");
        Posix.MakeDirectory(dir, Octal("0755"));
        for (int i = 0; i < Count; i++)
        {
            Posix.MakeNode(PosixPath.Join(dir, PosixPath.FromString($"entry-{i:D6}")), FileType.Fifo, Octal("0600"), 0);
        }

        var names = Posix.ReadDirectory(dir);

        Assert.Equal(Count, names.Count);
        Assert.Equal(Count, names.Select(n => PosixPath.ToDisplay(n)).Distinct().Count());
        Assert.DoesNotContain(names, n => n.AsSpan().SequenceEqual("."u8) || n.AsSpan().SequenceEqual(".."u8));
    }

    [Fact]
    public void OpenRead_HandleWorksWithRandomAccess()
    {
        byte[] content = new byte[100_000];
        new Random(3).NextBytes(content);
        Write(P("file"), content);

        using var handle = Posix.OpenRead(P("file"));
        Assert.Equal(content.Length, RandomAccess.GetLength(handle));
        byte[] buffer = new byte[1000];
        Assert.Equal(1000, RandomAccess.Read(handle, buffer, 50_000));
        Assert.Equal(content.AsSpan(50_000, 1000).ToArray(), buffer);
    }

    [Fact]
    public void OpenWrite_AndCreateFile_WriteAtOffsets()
    {
        using (var created = Posix.CreateFile(P("file"), Octal("0600"), truncate: false))
        {
            Posix.PWriteAll(created, "hello world"u8, 0);
        }

        Assert.Equal(Octal("0600"), Posix.LStat(P("file")).Mode);
        using (var opened = Posix.OpenWrite(P("file")))
        {
            Posix.PWriteAll(opened, "W"u8, 6);
            Posix.FSync(opened);
        }

        Assert.Equal("hello World"u8.ToArray(), Read(P("file")));

        using (var truncated = Posix.CreateFile(P("file"), Octal("0600"), truncate: true))
        {
            Assert.Equal(0, Posix.FStat(truncated).Size);
        }

        var e = Assert.Throws<PosixException>(() => Posix.OpenWrite(P("missing")));
        Assert.Equal(Errno.ENOENT, e.Errno);
    }

    [Fact]
    public void OpenDirectory_RefusesFilesAndSymlinks()
    {
        Posix.MakeDirectory(P("dir"), Octal("0755"));
        Write(P("file"), []);
        Posix.Symlink("dir"u8.ToArray(), P("link"));

        using (var dir = Posix.OpenDirectory(P("dir")))
        {
            Assert.Equal(FileType.Directory, Posix.FStat(dir).Type);
        }

        Assert.Equal(Errno.ENOTDIR, Assert.Throws<PosixException>(() => Posix.OpenDirectory(P("file"))).Errno);
        // The kernel checks O_DIRECTORY against the link itself before O_NOFOLLOW.
        Assert.Equal(Errno.ENOTDIR, Assert.Throws<PosixException>(() => Posix.OpenDirectory(P("link"))).Errno);
    }

    [Fact]
    public void Chmod_SetsSpecialBits_AndLeavesSymlinksAndTheirTargetsAlone()
    {
        Write(P("file"), []);
        Posix.Chmod(P("file"), Octal("4755"));
        Assert.Equal(Octal("4755"), Posix.LStat(P("file")).Mode);

        Posix.MakeDirectory(P("dir"), Octal("0755"));
        Posix.Chmod(P("dir"), Octal("1777"));
        Assert.Equal(Octal("1777"), Posix.LStat(P("dir")).Mode);

        Posix.Chmod(P("file"), Octal("0644"));
        Posix.Symlink("file"u8.ToArray(), P("link"));
        Posix.Chmod(P("link"), Octal("0600"));
        Assert.Equal(Octal("0644"), Posix.LStat(P("file")).Mode);
    }

    [Fact]
    public void LChown_ChangesTheSymlinkItself()
    {
        Write(P("file"), []);
        Posix.Symlink("file"u8.ToArray(), P("link"));
        var before = Posix.LStat(P("file"));
        if (!Posix.IsRoot)
        {
            Posix.LChown(P("link"), before.Uid, before.Gid); // allowed: no change
            return;
        }

        Posix.LChown(P("link"), 1234, 5678);

        Assert.Equal((1234u, 5678u), (Posix.LStat(P("link")).Uid, Posix.LStat(P("link")).Gid));
        Assert.Equal((before.Uid, before.Gid), (Posix.LStat(P("file")).Uid, Posix.LStat(P("file")).Gid));
    }

    [Fact]
    public void RenameUnlinkAndRemoveDirectory_Work()
    {
        Write(P("a"), [1]);
        Posix.Rename(P("a"), P("b"));
        Assert.False(Posix.TryLStat(P("a"), out _, out _));
        Assert.Equal([1], Read(P("b")));
        Posix.Unlink(P("b"));
        Assert.Equal(Errno.ENOENT, Assert.Throws<PosixException>(() => Posix.Unlink(P("b"))).Errno);

        Posix.MakeDirectory(P("d"), Octal("0755"));
        Write(P("d/x"), []);
        Assert.Equal(Errno.ENOTEMPTY, Assert.Throws<PosixException>(() => Posix.RemoveDirectory(P("d"))).Errno);
        Posix.Unlink(P("d/x"));
        Posix.RemoveDirectory(P("d"));
        Assert.False(Posix.TryLStat(P("d"), out _, out _));

        var e = Assert.Throws<PosixException>(() => Posix.Rename(P("nope"), P("other")));
        Assert.Equal(Errno.ENOENT, e.Errno);
        Assert.Contains(" -> ", e.Message);
    }

    [Fact]
    public void UsersAndGroups_AreLookedUpBothWays()
    {
        Assert.Equal("root", Posix.UserName(0));
        Assert.Equal("root", Posix.GroupName(0));
        Assert.Equal(0u, Posix.UserId("root"));
        Assert.Equal(0u, Posix.GroupId("root"));
        Assert.Null(Posix.UserName(3_999_999_999));
        Assert.Null(Posix.GroupName(3_999_999_999));
        Assert.Null(Posix.UserId("haven-no-such-user"));
        Assert.Null(Posix.GroupId("haven-no-such-group"));
        Assert.Equal(Environment.UserName == "root", Posix.IsRoot);
    }

    [Fact]
    public void PosixPath_JoinsValidatesAndDisplays()
    {
        Assert.Equal("/a"u8.ToArray(), PosixPath.Join("/"u8, "a"u8));
        Assert.Equal("/x/a"u8.ToArray(), PosixPath.Join("/x"u8, "a"u8));
        Assert.Equal("/x/a"u8.ToArray(), PosixPath.Join("/x/"u8, "a"u8));
        Assert.Equal("a"u8.ToArray(), PosixPath.Join(""u8, "a"u8));

        Assert.False(PosixPath.IsValidName(""u8));
        Assert.False(PosixPath.IsValidName("."u8));
        Assert.False(PosixPath.IsValidName(".."u8));
        Assert.False(PosixPath.IsValidName("a/b"u8));
        Assert.False(PosixPath.IsValidName([(byte)'a', 0]));
        Assert.True(PosixPath.IsValidName("..."u8));
        Assert.True(PosixPath.IsValidName(".hidden"u8));
        Assert.True(PosixPath.IsValidName([0xff]));

        Assert.Equal("naïve-🙂", PosixPath.ToDisplay(PosixPath.FromString("naïve-🙂")));
        Assert.Equal("a\\xffb\\xc3", PosixPath.ToDisplay([(byte)'a', 0xff, (byte)'b', 0xc3]));
        Assert.Equal("\\xed\\xa0\\x80", PosixPath.ToDisplay([0xed, 0xa0, 0x80])); // an encoded surrogate is invalid
    }

    private static string Run(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return output;
    }
}
