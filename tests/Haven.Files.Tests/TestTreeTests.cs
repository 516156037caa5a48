using System.Diagnostics;
using Haven.Core.Posix;
using Haven.Testing;
using Xunit;

namespace Haven.Files.Tests;

public sealed class TestTreeTests : IDisposable
{
    private static readonly CompareOptions Everything = new(Ownership: true, Times: true, Sparse: true);

    private readonly string _dir = Directory.CreateTempSubdirectory("haven-testtree-").FullName;

    private string Source => Path.Combine(_dir, "source");

    private string Copy => Path.Combine(_dir, "copy");

    // C# has no octal literals.
    private static uint Octal(string digits) => Convert.ToUInt32(digits, 8);

    public void Dispose() => TestTree.DeleteTree(_dir);

    private byte[] InCopy(string relative) => PosixPath.FromString(Path.Combine(Copy, relative));

    private void CreateAndCopy()
    {
        TestTree.CreateHardCases(Source, includeLargeFile: false, seed: 42);
        CopyPreservingEverything(Source, Copy);
    }

    private static void CopyPreservingEverything(string from, string to)
    {
        var start = new ProcessStartInfo("cp") { RedirectStandardError = true };
        foreach (string argument in new[] { "-a", "--sparse=always", from, to })
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        string errors = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"cp failed: {errors}");
    }

    [Fact]
    public void CreateHardCases_MakesTheCasesItPromises()
    {
        TestTree.CreateHardCases(Source, includeLargeFile: false, seed: 1);
        byte[] root = PosixPath.FromString(Source);
        FileStat At(string relative) => Posix.LStat(PosixPath.Join(root, PosixPath.FromString(relative)));

        Assert.Equal(FileType.Regular, Posix.LStat(PosixPath.Join(PosixPath.Join(root, "names"u8), TestTree.NonUtf8FileName)).Type);
        Assert.Equal(FileType.Regular, At("names/" + TestTree.LongName).Type);
        Assert.Equal(FileType.Regular, At("names/" + TestTree.UnicodeName).Type);
        Assert.Equal(FileType.Symlink, At("links/dangling").Type);
        Assert.Equal(FileType.Fifo, At("special/fifo").Type);
        Assert.Equal(TestTree.SparseFileSize, At("special/sparse").Size);
        Assert.True(At("special/sparse").Blocks512 * 512 < TestTree.SparseFileSize / 16);
        Assert.Equal(3ul, At("files/triple-3").Links);
        Assert.Equal(At("hardlinks/triple-1").Inode, At("hardlinks/sub/triple-2").Inode);
        Assert.Equal(2ul, At("hardlinks/pair-b").Links);
        Assert.Equal(Octal("4755"), At("modes/mode-4755").Mode);
        Assert.Equal(Octal("0700"), At("modes/private-dir").Mode);
        Assert.Equal(0, At("files/empty").Size);
        Assert.Equal((1 << 20) + 7, At("files/size-1MiB+7").Size);

        // Times were set last: every directory keeps an odd nanosecond mtime.
        Assert.NotEqual(0, At("files").ModifyTimeNs % 1000);
        Assert.NotEqual(0, At("deep").ModifyTimeNs % 1000);

        byte[] deep = PosixPath.Join(root, "deep"u8);
        for (int i = 0; i < TestTree.DeepLevels; i++)
        {
            deep = PosixPath.Join(deep, Assert.Single(Posix.ReadDirectory(deep)));
        }

        Assert.Equal("bottom.txt"u8.ToArray(), Assert.Single(Posix.ReadDirectory(deep)));

        if (Posix.IsRoot)
        {
            Assert.Equal((1ul, 3ul), Posix.SplitDevice(At("special/null-dev").RDev));
            Assert.Equal(TestTree.OtherOwnerId, At("owners/owned-link").Uid);
        }
    }

    [Fact]
    public void CreateHardCases_IsDeterministicForASeed()
    {
        TestTree.CreateHardCases(Source, includeLargeFile: false, seed: 5);
        TestTree.CreateHardCases(Copy, includeLargeFile: false, seed: 5);

        // Only the absolute symlink differs: it points into its own tree.
        var difference = Assert.Single(TestTree.Compare(Source, Copy, Everything));
        Assert.StartsWith("links/absolute: symlink target", difference);
    }

    [Fact]
    public void Compare_FindsNoDifference_InAFaithfulCopy()
    {
        CreateAndCopy();

        Assert.Empty(TestTree.Compare(Source, Copy, Everything));
    }

    [Fact]
    public void Compare_ReportsChangedByteModeAndMtime()
    {
        CreateAndCopy();

        // One byte, with the mtime put back so only the content differs.
        byte[] file = InCopy("files/size-4096");
        var before = Posix.LStat(file);
        using (var handle = Posix.OpenWrite(file))
        {
            Span<byte> one = stackalloc byte[1];
            Assert.Equal(1, Posix.PRead(handle, one, 1234));
            one[0] ^= 0xff;
            Posix.PWriteAll(handle, one, 1234);
        }

        Posix.SetTimes(file, before.AccessTimeNs, before.ModifyTimeNs);
        Posix.Chmod(InCopy("modes/mode-0600"), Octal("0640"));
        byte[] link = InCopy("links/relative");
        var linkStat = Posix.LStat(link);
        Posix.SetTimes(link, linkStat.AccessTimeNs, linkStat.ModifyTimeNs + 1);

        var differences = TestTree.Compare(Source, Copy, Everything);

        Assert.Equal(3, differences.Count);
        Assert.Contains("files/size-4096: content differs at offset 1234", differences);
        Assert.Contains("modes/mode-0600: mode 0640, expected 0600", differences);
        long seconds = linkStat.ModifyTimeNs / 1_000_000_000, nanoseconds = linkStat.ModifyTimeNs % 1_000_000_000;
        Assert.Contains($"links/relative: mtime {seconds}.{nanoseconds + 1:D9}, expected {seconds}.{nanoseconds:D9}", differences);
    }

    [Fact]
    public void Compare_ReportsMissingExtraFilledHolesBrokenLinksXattrsAndOwners()
    {
        CreateAndCopy();

        Posix.Unlink(InCopy("files/one"));
        using (Posix.CreateFile(InCopy("files/extra"), Octal("0644"), truncate: false))
        {
        }

        // Fill the holes of the sparse file with written zeros.
        byte[] sparse = InCopy("special/sparse");
        using (var handle = Posix.OpenWrite(sparse))
        {
            byte[] zeros = new byte[1 << 20];
            for (long offset = 1 << 20; offset < 16L << 20; offset += zeros.Length)
            {
                Posix.PWriteAll(handle, zeros, offset);
            }

            Posix.FSync(handle);
        }

        // Replace one name of the hard-linked pair by an equal but separate file.
        byte[] pairB = InCopy("hardlinks/pair-b");
        byte[] content = new byte[Posix.LStat(pairB).Size];
        using (var handle = Posix.OpenRead(pairB))
        {
            Posix.PRead(handle, content, 0);
        }

        Posix.Unlink(pairB);
        using (var handle = Posix.CreateFile(pairB, Octal("0644"), truncate: true))
        {
            Posix.PWriteAll(handle, content, 0);
        }

        bool xattrs = Posix.ListXattrs(InCopy("xattrs/file")).Count > 0;
        if (xattrs)
        {
            Posix.SetXattr(InCopy("xattrs/file"), "user.haven.comment"u8.ToArray(), "changed"u8.ToArray());
        }

        if (Posix.IsRoot)
        {
            Posix.LChown(InCopy("owners/owned-link"), 0, 0);
        }

        var differences = TestTree.Compare(Source, Copy, new CompareOptions(Ownership: true, Times: false, Sparse: true));

        Assert.Contains("files/one: missing", differences);
        Assert.Contains("files/extra: unexpected", differences);
        Assert.Contains(differences, d => d.StartsWith("special/sparse: allocates ", StringComparison.Ordinal));
        Assert.Contains(differences, d => d.StartsWith("hard links hardlinks/pair-a, hardlinks/pair-b: share an inode in the expected tree", StringComparison.Ordinal));
        if (xattrs)
        {
            Assert.Contains(differences, d => d.StartsWith("xattrs/file: xattr user.haven.comment is ", StringComparison.Ordinal));
        }

        if (Posix.IsRoot)
        {
            Assert.Contains("owners/owned-link: owner 0:0, expected 1234:5678", differences);
        }

        Assert.DoesNotContain(differences, d => d.Contains("mtime", StringComparison.Ordinal));
    }
}
