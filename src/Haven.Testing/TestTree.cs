using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using Haven.Core.Posix;
using PosixCalls = Haven.Core.Posix.Posix;

namespace Haven.Testing;

/// <summary>What <see cref="TestTree.Compare"/> checks beyond names, types, sizes, content, link targets,
/// modes, xattrs, hard-link structure and device numbers, which it always checks.</summary>
/// <param name="Ownership">Compare uid and gid (meaningful when the restore ran as root).</param>
/// <param name="Times">Compare modification times to the nanosecond, of every entry including directories and symlinks.</param>
/// <param name="Sparse">Require that a restored file allocates no more than the original plus a little slack,
/// i.e. that holes stay holes.</param>
public sealed record CompareOptions(bool Ownership = true, bool Times = true, bool Sparse = true);

/// <summary>
/// A file tree with the cases a backup/restore round trip gets wrong, and a comparer that says how two trees differ.
/// Everything goes through <see cref="Haven.Core.Posix.Posix"/> so non-UTF-8 names survive.
/// </summary>
public static class TestTree
{
    /// <summary>The size of the file <c>large/large.bin</c>: just over 1 GiB, not a multiple of any block size.</summary>
    public const long LargeFileSize = (1L << 30) + 12345;

    /// <summary>The size of <c>special/sparse</c>: 64 MiB, allocated only at 0, at 16 MiB and in the last 4 KiB.</summary>
    public const long SparseFileSize = 64L << 20;

    /// <summary>The first modification time given (1234567891.123456789 s); later entries get later odd times.</summary>
    public const long BaseTimeNs = 1_234_567_891_123_456_789;

    /// <summary>The uid and gid given to <c>owners/owned-file</c> and <c>owners/owned-link</c> when run as root.</summary>
    public const uint OtherOwnerId = 1234;

    public const uint OtherGroupId = 5678;

    // C# has no octal literals: modes in hex, octal in the comment.
    private const uint FileMode = 0x1A4;             // 0644
    private const uint GroupReadMode = 0x1A0;        // 0640
    private const uint PrivateMode = 0x180;          // 0600
    private const uint ExecutableMode = 0x1ED;       // 0755
    private const uint SetuidMode = 0x9ED;           // 04755
    private const uint DirectoryMode = 0x1ED;        // 0755
    private const uint PrivateDirectoryMode = 0x1C0; // 0700

    /// <summary>The 255-byte name used in <c>names/</c>.</summary>
    public static readonly string LongName = new('L', PosixPath.MaxNameLength);

    /// <summary>The unicode name used in <c>names/</c>.</summary>
    public const string UnicodeName = "naïve-日本語-🙂.txt";

    /// <summary>A file name that is not UTF-8: "bad-" then 0xff 0xfe, then ".bin".</summary>
    public static byte[] NonUtf8FileName => [(byte)'b', (byte)'a', (byte)'d', (byte)'-', 0xff, 0xfe, (byte)'.', (byte)'b', (byte)'i', (byte)'n'];

    /// <summary>A directory name that is not UTF-8: "dir-" then 0xfe 0xff.</summary>
    public static byte[] NonUtf8DirectoryName => [(byte)'d', (byte)'i', (byte)'r', (byte)'-', 0xfe, 0xff];

    /// <summary>How many directories <c>deep/</c> nests, each with a 40-byte name.</summary>
    public const int DeepLevels = 60;

    /// <summary>
    /// Fills <paramref name="root"/> (created if missing) with the hard cases, content drawn from a
    /// <see cref="Random"/> seeded with <paramref name="seed"/>:
    /// <list type="bullet">
    /// <item><c>files/</c>: sizes 0, 1, 4095, 4096, 1 MiB+7, 3 MiB+1 and 6 MiB+5, and <c>triple-3</c>.</item>
    /// <item><c>names/</c>: a unicode name, a non-UTF-8 file name and directory name, a 255-byte name.</item>
    /// <item><c>deep/</c>: 60 nested 40-byte directory names with <c>bottom.txt</c> at the end (about 2.5 KB of path).</item>
    /// <item><c>empty-dir/</c>.</item>
    /// <item><c>links/</c>: symlinks <c>relative</c>, <c>absolute</c>, <c>dangling</c>, <c>to-dir</c>, <c>non-utf8-target</c>.</item>
    /// <item><c>hardlinks/</c>: <c>pair-a</c> = <c>pair-b</c>; <c>triple-1</c> = <c>sub/triple-2</c> = <c>files/triple-3</c>.</item>
    /// <item><c>special/</c>: <c>sparse</c> (see <see cref="SparseFileSize"/>), <c>fifo</c>, and as root
    /// <c>null-dev</c> (char device 1,3, mode 0644).</item>
    /// <item><c>xattrs/</c>: <c>file</c> and directory <c>dir</c> with user.* attributes (skipped where the file
    /// system has none).</item>
    /// <item><c>modes/</c>: <c>mode-0600</c>, <c>mode-0755</c>, <c>mode-4755</c> (setuid), directory <c>private-dir</c> (0700).</item>
    /// <item>As root, <c>owners/owned-file</c> and symlink <c>owners/owned-link</c> owned by 1234:5678.</item>
    /// <item>With <paramref name="includeLargeFile"/>, <c>large/large.bin</c> (<see cref="LargeFileSize"/> bytes, a
    /// random 4 MiB block repeated with a counter stamped every 64 KiB, so no two 64 KiB pieces are equal).</item>
    /// </list>
    /// Other files have mode 0644, directories 0755. Access and modification times are set last, bottom-up, so
    /// that directory times stick: odd nanoseconds from <see cref="BaseTimeNs"/> on.
    /// </summary>
    public static void CreateHardCases(string root, bool includeLargeFile, int seed)
    {
        ArgumentNullException.ThrowIfNull(root);
        string fullRoot = Path.GetFullPath(root);
        Directory.CreateDirectory(fullRoot);
        byte[] r = PosixPath.FromString(fullRoot);
        var random = new Random(seed);

        byte[] files = Dir(r, "files");
        foreach (var (name, size) in new (string, int)[]
        {
            ("empty", 0), ("one", 1), ("size-4095", 4095), ("size-4096", 4096),
            ("size-1MiB+7", (1 << 20) + 7), ("size-3MiB+1", (3 << 20) + 1), ("size-6MiB+5", (6 << 20) + 5),
        })
        {
            WriteFile(J(files, name), RandomBytes(random, size), FileMode);
        }

        byte[] names = Dir(r, "names");
        WriteFile(J(names, UnicodeName), RandomBytes(random, 100), FileMode);
        WriteFile(PosixPath.Join(names, NonUtf8FileName), RandomBytes(random, 200), FileMode);
        byte[] badDir = PosixPath.Join(names, NonUtf8DirectoryName);
        MakeDirectory(badDir, DirectoryMode);
        WriteFile(J(badDir, "inside.txt"), RandomBytes(random, 300), FileMode);
        WriteFile(J(names, LongName), RandomBytes(random, 255), FileMode);

        byte[] deep = Dir(r, "deep");
        for (int level = 1; level <= DeepLevels; level++)
        {
            string name = $"level-{level:D2}-".PadRight(40, 'd');
            deep = J(deep, name);
            MakeDirectory(deep, DirectoryMode);
        }

        WriteFile(J(deep, "bottom.txt"), RandomBytes(random, 1000), FileMode);

        Dir(r, "empty-dir");

        byte[] links = Dir(r, "links");
        PosixCalls.Symlink(Bytes("../files/one"), J(links, "relative"));
        PosixCalls.Symlink(Bytes(fullRoot.TrimEnd('/') + "/files/one"), J(links, "absolute"));
        PosixCalls.Symlink(Bytes("nowhere/does-not-exist"), J(links, "dangling"));
        PosixCalls.Symlink(Bytes("../files"), J(links, "to-dir"));
        PosixCalls.Symlink([.. Bytes("../names/"), .. NonUtf8FileName], J(links, "non-utf8-target"));

        byte[] hard = Dir(r, "hardlinks");
        WriteFile(J(hard, "pair-a"), RandomBytes(random, 5000), FileMode);
        PosixCalls.Link(J(hard, "pair-a"), J(hard, "pair-b"));
        byte[] hardSub = Dir(hard, "sub");
        WriteFile(J(hard, "triple-1"), RandomBytes(random, 7000), FileMode);
        PosixCalls.Link(J(hard, "triple-1"), J(hardSub, "triple-2"));
        PosixCalls.Link(J(hard, "triple-1"), J(files, "triple-3"));

        byte[] special = Dir(r, "special");
        WriteSparse(J(special, "sparse"), random);
        PosixCalls.MakeNode(J(special, "fifo"), FileType.Fifo, FileMode, 0);
        if (PosixCalls.IsRoot)
        {
            byte[] nullDev = J(special, "null-dev");
            PosixCalls.MakeNode(nullDev, FileType.CharDevice, FileMode, PosixCalls.MakeDevice(1, 3));
            PosixCalls.Chmod(nullDev, FileMode);
        }

        byte[] xattrs = Dir(r, "xattrs");
        byte[] xattrFile = J(xattrs, "file");
        WriteFile(xattrFile, RandomBytes(random, 123), FileMode);
        byte[] xattrDir = Dir(xattrs, "dir");
        if (TrySetXattr(xattrFile, "user.haven.comment", Bytes("a comment")))
        {
            PosixCalls.SetXattr(xattrFile, Bytes("user.haven.binary"), [0, 1, 2, 0xff, 0, 0xfe]);
            PosixCalls.SetXattr(xattrFile, Bytes("user.haven.empty"), []);
            PosixCalls.SetXattr(xattrDir, Bytes("user.haven.dir"), RandomBytes(random, 1000));
        }

        byte[] modes = Dir(r, "modes");
        WriteFile(J(modes, "mode-0600"), RandomBytes(random, 10), PrivateMode);
        WriteFile(J(modes, "mode-0755"), RandomBytes(random, 10), ExecutableMode);
        WriteFile(J(modes, "mode-4755"), RandomBytes(random, 10), SetuidMode);
        Dir(modes, "private-dir", PrivateDirectoryMode);

        if (PosixCalls.IsRoot)
        {
            byte[] owners = Dir(r, "owners");
            byte[] ownedFile = J(owners, "owned-file");
            WriteFile(ownedFile, RandomBytes(random, 10), FileMode);
            PosixCalls.LChown(ownedFile, OtherOwnerId, OtherGroupId);
            PosixCalls.Chmod(ownedFile, GroupReadMode);
            byte[] ownedLink = J(owners, "owned-link");
            PosixCalls.Symlink(Bytes("owned-file"), ownedLink);
            PosixCalls.LChown(ownedLink, OtherOwnerId, OtherGroupId);
        }

        if (includeLargeFile)
        {
            WriteLarge(J(Dir(r, "large"), "large.bin"), random);
        }

        long time = BaseTimeNs;
        SetTimesBottomUp(r, ref time);
    }

    /// <summary>Removes <paramref name="root"/> and everything under it (where System.IO would trip over
    /// non-UTF-8 names). A missing root is not an error.</summary>
    public static void DeleteTree(string root) => PosixTree.Delete(root);

    /// <summary>
    /// The differences between the trees at <paramref name="expectedRoot"/> and <paramref name="actualRoot"/>, one
    /// readable line each, in a stable order; empty when they are the same. The roots themselves are compared
    /// too (mode, times, xattrs), shown as ".".
    /// </summary>
    public static IReadOnlyList<string> Compare(string expectedRoot, string actualRoot, CompareOptions options)
    {
        ArgumentNullException.ThrowIfNull(expectedRoot);
        ArgumentNullException.ThrowIfNull(actualRoot);
        ArgumentNullException.ThrowIfNull(options);
        var comparer = new TreeComparer(
            PosixPath.FromString(Path.GetFullPath(expectedRoot)),
            PosixPath.FromString(Path.GetFullPath(actualRoot)),
            options);
        comparer.Run();
        return comparer.Differences;
    }

    // ------------------------------------------------------------------ generation helpers

    private static byte[] Bytes(string s) => PosixPath.FromString(s);

    private static byte[] J(byte[] dir, string name) => PosixPath.Join(dir, Bytes(name));

    private static byte[] Dir(byte[] parent, string name, uint mode = DirectoryMode)
    {
        byte[] path = J(parent, name);
        MakeDirectory(path, mode);
        return path;
    }

    private static void MakeDirectory(byte[] path, uint mode)
    {
        PosixCalls.MakeDirectory(path, mode);
        PosixCalls.Chmod(path, mode); // the umask may have taken bits away
    }

    private static byte[] RandomBytes(Random random, int size)
    {
        var bytes = new byte[size];
        random.NextBytes(bytes);
        return bytes;
    }

    private static void WriteFile(byte[] path, ReadOnlySpan<byte> content, uint mode)
    {
        using (var file = PosixCalls.CreateFile(path, PrivateMode, truncate: true))
        {
            PosixCalls.PWriteAll(file, content, 0);
        }

        PosixCalls.Chmod(path, mode);
    }

    private static void WriteSparse(byte[] path, Random random)
    {
        using (var file = PosixCalls.CreateFile(path, PrivateMode, truncate: true))
        {
            PosixCalls.FTruncate(file, SparseFileSize);
            PosixCalls.PWriteAll(file, RandomBytes(random, 64 << 10), 0);
            PosixCalls.PWriteAll(file, RandomBytes(random, 64 << 10), 16L << 20);
            PosixCalls.PWriteAll(file, RandomBytes(random, 4 << 10), SparseFileSize - (4 << 10));
        }

        PosixCalls.Chmod(path, FileMode);
    }

    // A 4 MiB random block written over and over, each 64 KiB stamped with a running counter: distinct content
    // for a content-defined chunker at disk speed, instead of generating 1 GiB of random numbers.
    private static void WriteLarge(byte[] path, Random random)
    {
        const int BlockSize = 4 << 20;
        const int StampEvery = 64 << 10;
        byte[] block = RandomBytes(random, BlockSize);
        byte[] buffer = new byte[BlockSize];
        long counter = 0;
        using (var file = PosixCalls.CreateFile(path, PrivateMode, truncate: true))
        {
            for (long offset = 0; offset < LargeFileSize; offset += BlockSize)
            {
                int length = (int)Math.Min(BlockSize, LargeFileSize - offset);
                block.AsSpan(0, length).CopyTo(buffer);
                for (int stamp = 0; stamp + sizeof(long) <= length; stamp += StampEvery)
                {
                    BinaryPrimitives.WriteInt64LittleEndian(buffer.AsSpan(stamp), ++counter);
                }

                PosixCalls.PWriteAll(file, buffer.AsSpan(0, length), offset);
            }
        }

        PosixCalls.Chmod(path, FileMode);
    }

    private static bool TrySetXattr(byte[] path, string name, byte[] value)
    {
        try
        {
            PosixCalls.SetXattr(path, Bytes(name), value);
            return true;
        }
        catch (PosixException e) when (e.Errno == Errno.EOPNOTSUPP)
        {
            return false;
        }
    }

    // Children before their directory, so creating nothing afterwards disturbs a directory's mtime. Each entry
    // gets a time about an hour after the previous one, with a nanosecond part that is never a round number.
    private static void SetTimesBottomUp(byte[] path, ref long time)
    {
        var stat = PosixCalls.LStat(path);
        if (stat.Type == FileType.Directory)
        {
            var children = PosixCalls.ReadDirectory(path);
            children.Sort(static (x, y) => x.AsSpan().SequenceCompareTo(y));
            foreach (byte[] name in children)
            {
                SetTimesBottomUp(PosixPath.Join(path, name), ref time);
            }
        }

        time += 3_600_000_000_017;
        PosixCalls.SetTimes(path, time - 1_000_000_000_000, time);
    }

    // ------------------------------------------------------------------ comparison

    private sealed class TreeComparer(byte[] expectedRoot, byte[] actualRoot, CompareOptions options)
    {
        private const int ContentBufferSize = 1 << 20;

        /// <summary>Allowed extra allocation, in 512-byte blocks: 128 KiB plus 1/16 of the original, for file
        /// systems that allocate in larger units or preallocate; far below a 64 MiB hole filled with zeros.</summary>
        private static long SparseSlack(long expectedBlocks) => 256 + expectedBlocks / 16;

        private readonly List<LinkEntry> _links = [];

        public List<string> Differences { get; } = [];

        public void Run()
        {
            if (!Stat(expectedRoot, out var e, "expected root") | !Stat(actualRoot, out var a, "actual root"))
            {
                return;
            }

            CompareEntry([], e, a);
            CompareHardLinks();
        }

        private bool Stat(byte[] path, out FileStat stat, string what)
        {
            if (PosixCalls.TryLStat(path, out stat, out int errno))
            {
                return true;
            }

            Differences.Add($"{what} {PosixPath.ToDisplay(path)}: {PosixException.Describe(errno)}");
            return false;
        }

        private void Report(byte[] relative, string what) =>
            Differences.Add($"{(relative.Length == 0 ? "." : PosixPath.ToDisplay(relative))}: {what}");

        private void CompareEntry(byte[] relative, FileStat e, FileStat a)
        {
            byte[] expectedPath = relative.Length == 0 ? expectedRoot : PosixPath.Join(expectedRoot, relative);
            byte[] actualPath = relative.Length == 0 ? actualRoot : PosixPath.Join(actualRoot, relative);

            if (e.Type != a.Type)
            {
                Report(relative, $"type {a.Type}, expected {e.Type}");
                return;
            }

            // Linux symlinks have no mode of their own (always 0777).
            if (e.Type != FileType.Symlink && e.Mode != a.Mode)
            {
                Report(relative, $"mode {FormatMode(a.Mode)}, expected {FormatMode(e.Mode)}");
            }

            if (options.Ownership && (e.Uid != a.Uid || e.Gid != a.Gid))
            {
                Report(relative, $"owner {a.Uid}:{a.Gid}, expected {e.Uid}:{e.Gid}");
            }

            if (options.Times && e.ModifyTimeNs != a.ModifyTimeNs)
            {
                Report(relative, $"mtime {Time(a.ModifyTimeNs)}, expected {Time(e.ModifyTimeNs)}");
            }

            CompareXattrs(relative, expectedPath, actualPath);

            switch (e.Type)
            {
                case FileType.Directory:
                    CompareDirectories(relative, expectedPath, actualPath);
                    return;
                case FileType.Regular:
                    CompareFiles(relative, expectedPath, actualPath, e, a);
                    break;
                case FileType.Symlink:
                    byte[] expectedTarget = PosixCalls.ReadLink(expectedPath);
                    byte[] actualTarget = PosixCalls.ReadLink(actualPath);
                    if (!expectedTarget.AsSpan().SequenceEqual(actualTarget))
                    {
                        Report(relative, $"symlink target {PosixPath.ToDisplay(actualTarget)}, expected {PosixPath.ToDisplay(expectedTarget)}");
                    }

                    break;
                case FileType.CharDevice:
                case FileType.BlockDevice:
                    if (e.RDev != a.RDev)
                    {
                        Report(relative, $"device {Device(a.RDev)}, expected {Device(e.RDev)}");
                    }

                    break;
            }

            if (e.Links > 1 || a.Links > 1)
            {
                _links.Add(new LinkEntry(relative, e.Device, e.Inode, a.Device, a.Inode));
            }
        }

        private void CompareDirectories(byte[] relative, byte[] expectedPath, byte[] actualPath)
        {
            var expectedNames = PosixCalls.ReadDirectory(expectedPath);
            var actualNames = PosixCalls.ReadDirectory(actualPath);
            Comparison<byte[]> byBytes = static (x, y) => x.AsSpan().SequenceCompareTo(y);
            expectedNames.Sort(byBytes);
            actualNames.Sort(byBytes);

            int i = 0, j = 0;
            while (i < expectedNames.Count || j < actualNames.Count)
            {
                int order = i == expectedNames.Count ? 1
                    : j == actualNames.Count ? -1
                    : byBytes(expectedNames[i], actualNames[j]);
                if (order < 0)
                {
                    Report(PosixPath.Join(relative, expectedNames[i++]), "missing");
                    continue;
                }

                if (order > 0)
                {
                    Report(PosixPath.Join(relative, actualNames[j++]), "unexpected");
                    continue;
                }

                byte[] child = PosixPath.Join(relative, expectedNames[i]);
                i++;
                j++;
                bool haveExpected = PosixCalls.TryLStat(PosixPath.Join(expectedRoot, child), out var e, out int expectedErrno);
                bool haveActual = PosixCalls.TryLStat(PosixPath.Join(actualRoot, child), out var a, out int actualErrno);
                if (!haveExpected || !haveActual)
                {
                    Report(child, $"cannot stat: {PosixException.Describe(haveExpected ? actualErrno : expectedErrno)}");
                    continue;
                }

                CompareEntry(child, e, a);
            }
        }

        private void CompareFiles(byte[] relative, byte[] expectedPath, byte[] actualPath, FileStat e, FileStat a)
        {
            if (e.Size != a.Size)
            {
                Report(relative, $"size {a.Size}, expected {e.Size}");
            }
            else
            {
                long mismatch = FirstDifference(expectedPath, actualPath);
                if (mismatch >= 0)
                {
                    Report(relative, $"content differs at offset {mismatch}");
                }
            }

            if (options.Sparse && a.Blocks512 > e.Blocks512 + SparseSlack(e.Blocks512))
            {
                Report(relative, $"allocates {a.Blocks512 * 512} bytes, expected {e.Blocks512 * 512} (holes filled in?)");
            }
        }

        // Streams both files; returns the offset of the first differing byte or -1.
        private static long FirstDifference(byte[] expectedPath, byte[] actualPath)
        {
            using var expected = PosixCalls.OpenRead(expectedPath);
            using var actual = PosixCalls.OpenRead(actualPath);
            byte[] expectedBuffer = ArrayPool<byte>.Shared.Rent(ContentBufferSize);
            byte[] actualBuffer = ArrayPool<byte>.Shared.Rent(ContentBufferSize);
            try
            {
                for (long offset = 0; ; )
                {
                    int n = ReadFull(expected, expectedBuffer.AsSpan(0, ContentBufferSize), offset);
                    int m = ReadFull(actual, actualBuffer.AsSpan(0, ContentBufferSize), offset);
                    int common = expectedBuffer.AsSpan(0, n).CommonPrefixLength(actualBuffer.AsSpan(0, m));
                    if (common < n || common < m)
                    {
                        return offset + common;
                    }

                    if (n == 0)
                    {
                        return -1;
                    }

                    offset += n;
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(expectedBuffer);
                ArrayPool<byte>.Shared.Return(actualBuffer);
            }
        }

        private static int ReadFull(Microsoft.Win32.SafeHandles.SafeFileHandle file, Span<byte> buffer, long offset)
        {
            int total = 0;
            while (total < buffer.Length)
            {
                int n = PosixCalls.PRead(file, buffer[total..], offset + total);
                if (n == 0)
                {
                    break;
                }

                total += n;
            }

            return total;
        }

        private void CompareXattrs(byte[] relative, byte[] expectedPath, byte[] actualPath)
        {
            var expected = ReadXattrs(expectedPath);
            var actual = ReadXattrs(actualPath);
            foreach (var (name, value) in expected)
            {
                if (!actual.TryGetValue(name, out byte[]? actualValue))
                {
                    Report(relative, $"xattr {name} missing");
                }
                else if (!value.AsSpan().SequenceEqual(actualValue))
                {
                    Report(relative, $"xattr {name} is {Convert.ToHexString(actualValue)}, expected {Convert.ToHexString(value)}");
                }
            }

            foreach (string name in actual.Keys)
            {
                if (!expected.ContainsKey(name))
                {
                    Report(relative, $"xattr {name} unexpected");
                }
            }
        }

        private static SortedDictionary<string, byte[]> ReadXattrs(byte[] path)
        {
            var result = new SortedDictionary<string, byte[]>(StringComparer.Ordinal);
            foreach (byte[] name in PosixCalls.ListXattrs(path))
            {
                byte[]? value = PosixCalls.GetXattr(path, name);
                if (value is not null)
                {
                    result[PosixPath.ToDisplay(name)] = value;
                }
            }

            return result;
        }

        // Entries that share an inode in the expected tree must share one in the actual tree, and no others may.
        private void CompareHardLinks()
        {
            var expectedGroups = _links.GroupBy(l => (l.ExpectedDevice, l.ExpectedInode));
            foreach (var group in expectedGroups)
            {
                if (group.Select(l => (l.ActualDevice, l.ActualInode)).Distinct().Count() > 1)
                {
                    Differences.Add($"hard links {Names(group)}: share an inode in the expected tree but not in the actual one");
                }
            }

            foreach (var group in _links.GroupBy(l => (l.ActualDevice, l.ActualInode)))
            {
                if (group.Select(l => (l.ExpectedDevice, l.ExpectedInode)).Distinct().Count() > 1)
                {
                    Differences.Add($"hard links {Names(group)}: share an inode in the actual tree but not in the expected one");
                }
            }

            static string Names(IEnumerable<LinkEntry> group) =>
                string.Join(", ", group.Select(l => PosixPath.ToDisplay(l.Relative)));
        }

        private static string FormatMode(uint mode) => "0" + Convert.ToString(mode, 8).PadLeft(3, '0');

        private static string Time(long ns)
        {
            long seconds = Math.DivRem(ns, 1_000_000_000, out long rest);
            if (rest < 0)
            {
                seconds--;
                rest += 1_000_000_000;
            }

            return string.Create(CultureInfo.InvariantCulture, $"{seconds}.{rest:D9}");
        }

        private static string Device(ulong dev)
        {
            var (major, minor) = PosixCalls.SplitDevice(dev);
            return string.Create(CultureInfo.InvariantCulture, $"{major},{minor}");
        }

        private sealed record LinkEntry(byte[] Relative, ulong ExpectedDevice, ulong ExpectedInode, ulong ActualDevice, ulong ActualInode);
    }
}
