using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;
using static Haven.Core.Posix.LibC;

namespace Haven.Core.Posix;

/// <summary>
/// The Linux file system calls that backup and restore need, with byte paths. System.IO cannot be used for
/// these: it decodes names as UTF-8 (losing names that are not), and it has no ctime, inode, nanosecond times,
/// uid/gid, xattrs, device nodes or SEEK_DATA/SEEK_HOLE.
/// </summary>
/// <remarks>
/// <para>Paths are given without a NUL terminator (one inside a path is an <see cref="ArgumentException"/>);
/// they are copied to a NUL-terminated buffer on the stack, or rented for paths of 512 bytes and more.
/// There is no PATH_MAX limit here: the kernel refuses paths over 4096 bytes with ENAMETOOLONG.</para>
/// <para>Every failure is a <see cref="PosixException"/> with the errno, the libc function and the path.
/// Calls that can return EINTR are retried. All methods are thread-safe.</para>
/// <para><see cref="LStat"/>, <see cref="TryLStat"/> and <see cref="ReadDirectory"/> run once per file of a backup:
/// they allocate nothing beyond their result.</para>
/// </remarks>
[SkipLocalsInit]
public static unsafe class Posix
{
    /// <summary>Big enough for a few hundred entries per getdents64 call; glibc's readdir uses 32 KiB too.</summary>
    private const int DirentBufferSize = 32 * 1024;

    /// <summary>Xattr names and values up to this size are read into a stack buffer first.</summary>
    private const int XattrStackSize = 512;

    // ---------------------------------------------------------------- metadata

    /// <summary><c>statx</c> of <paramref name="path"/>, not following a symlink at the final component and not
    /// triggering automounts (the semantics of <c>lstat</c>).</summary>
    public static FileStat LStat(byte[] path)
    {
        if (!TryLStat(path, out var stat, out int errno))
        {
            ThrowErrno(errno, "statx", path);
        }

        return stat;
    }

    /// <summary>Like <see cref="LStat"/>, for callers that expect failures (ENOENT in a changing tree):
    /// returns false with the errno instead of throwing.</summary>
    public static bool TryLStat(byte[] path, out FileStat stat, out int errno)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        StatxBuffer buffer;
        int rc;
        fixed (byte* ptr = p)
        {
            rc = statx(AT_FDCWD, ptr, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &buffer);
        }

        if (rc != 0)
        {
            errno = Marshal.GetLastPInvokeError();
            stat = default;
            return false;
        }

        errno = 0;
        stat = ToFileStat(in buffer);
        return true;
    }

    /// <summary><c>statx</c> of an open file (AT_EMPTY_PATH).</summary>
    public static FileStat FStat(SafeFileHandle file)
    {
        using var fd = new FdLease(file);
        StatxBuffer buffer;
        byte empty = 0;
        if (statx(fd.Fd, &empty, AT_EMPTY_PATH, STATX_BASIC_STATS, &buffer) != 0)
        {
            ThrowLast("statx", null);
        }

        return ToFileStat(in buffer);
    }

    private static FileStat ToFileStat(in StatxBuffer b) => new(
        TypeOf(b.Mode),
        b.Mode & 0xFFFu, // 07777
        b.Uid,
        b.Gid,
        (long)b.Size,
        b.Inode,
        MakeDevice(b.DevMajor, b.DevMinor),
        b.Links,
        MakeDevice(b.RDevMajor, b.RDevMinor),
        ToNanoseconds(b.AccessSeconds, b.AccessNanoseconds),
        ToNanoseconds(b.ModifySeconds, b.ModifyNanoseconds),
        ToNanoseconds(b.ChangeSeconds, b.ChangeNanoseconds),
        (long)b.Blocks);

    private static FileType TypeOf(uint mode) => (mode & S_IFMT) switch
    {
        S_IFREG => FileType.Regular,
        S_IFDIR => FileType.Directory,
        S_IFLNK => FileType.Symlink,
        S_IFCHR => FileType.CharDevice,
        S_IFBLK => FileType.BlockDevice,
        S_IFIFO => FileType.Fifo,
        S_IFSOCK => FileType.Socket,
        _ => FileType.Unknown,
    };

    // Nanoseconds in a long reach the years 1677..2262; times outside are clamped rather than wrapped.
    private static long ToNanoseconds(long seconds, uint nanoseconds)
    {
        const long Billion = 1_000_000_000;
        if (seconds > long.MaxValue / Billion - 1)
        {
            return long.MaxValue;
        }

        if (seconds < long.MinValue / Billion + 1)
        {
            return long.MinValue;
        }

        return seconds * Billion + nanoseconds;
    }

    private static Timespec ToTimespec(long nanoseconds)
    {
        long seconds = Math.DivRem(nanoseconds, 1_000_000_000, out long rest);
        if (rest < 0)
        {
            seconds--;
            rest += 1_000_000_000;
        }

        return new Timespec { Seconds = seconds, Nanoseconds = rest };
    }

    // ---------------------------------------------------------------- directories and links

    /// <summary>
    /// The names in directory <paramref name="path"/>, as bytes, without "." and "..", in the order the file
    /// system returns them. Reads with getdents64 into a pooled 32 KiB buffer. Follows a symlink at the final
    /// component, like <c>opendir</c>.
    /// </summary>
    public static List<byte[]> ReadDirectory(byte[] path)
    {
        int fd = OpenOrThrow(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(DirentBufferSize);
        try
        {
            var names = new List<byte[]>();
            fixed (byte* b = buffer)
            {
                while (true)
                {
                    nint n = getdents64(fd, b, (nuint)buffer.Length);
                    if (n == 0)
                    {
                        return names;
                    }

                    if (n < 0)
                    {
                        int errno = Marshal.GetLastPInvokeError();
                        if (errno == Errno.EINTR)
                        {
                            continue;
                        }

                        ThrowErrno(errno, "getdents64", path);
                    }

                    // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
                    for (nint offset = 0; offset < n;)
                    {
                        int recordLength = *(ushort*)(b + offset + 16);
                        var name = new ReadOnlySpan<byte>(b + offset + 19, recordLength - 19);
                        name = name[..name.IndexOf((byte)0)];
                        if (!IsDotOrDotDot(name))
                        {
                            names.Add(name.ToArray());
                        }

                        offset += recordLength;
                    }
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            close(fd);
        }
    }

    private static bool IsDotOrDotDot(ReadOnlySpan<byte> name) =>
        name.Length <= 2 && name.Length > 0 && name[0] == (byte)'.' && (name.Length == 1 || name[1] == (byte)'.');

    /// <summary>The target of symlink <paramref name="path"/>, byte for byte, of any length.</summary>
    public static byte[] ReadLink(byte[] path)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        fixed (byte* ptr = p)
        {
            // readlink truncates silently: a result that fills the buffer may be cut short, so retry larger.
            byte* first = stackalloc byte[256];
            nint n = readlink(ptr, first, 256);
            if (n < 0)
            {
                ThrowLast("readlink", path);
            }

            if (n < 256)
            {
                return new ReadOnlySpan<byte>(first, (int)n).ToArray();
            }

            for (int size = 4096; size <= 1 << 24; size *= 2)
            {
                byte[] rented = ArrayPool<byte>.Shared.Rent(size);
                try
                {
                    fixed (byte* b = rented)
                    {
                        n = readlink(ptr, b, (nuint)rented.Length);
                    }

                    if (n < 0)
                    {
                        ThrowLast("readlink", path);
                    }

                    if (n < rented.Length)
                    {
                        return rented.AsSpan(0, (int)n).ToArray();
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(rented);
                }
            }

            throw new PosixException(Errno.ENAMETOOLONG, "readlink", path);
        }
    }

    /// <summary>mkdir with <paramref name="mode"/> (subject to the umask). An existing entry fails with EEXIST.</summary>
    public static void MakeDirectory(byte[] path, uint mode)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        fixed (byte* ptr = p)
        {
            if (mkdir(ptr, mode & 0xFFF) != 0)
            {
                ThrowLast("mkdir", path);
            }
        }
    }

    /// <summary>Creates symlink <paramref name="linkPath"/> pointing at <paramref name="target"/> (stored as given,
    /// not resolved). The exception's <see cref="PosixException.Path"/> is the link path.</summary>
    public static void Symlink(byte[] target, byte[] linkPath)
    {
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(linkPath);
        using var t = new CPath(target, stackalloc byte[CPath.StackSize], nameof(target));
        using var l = new CPath(linkPath, stackalloc byte[CPath.StackSize], nameof(linkPath));
        fixed (byte* tp = t)
        fixed (byte* lp = l)
        {
            if (symlink(tp, lp) != 0)
            {
                ThrowLast("symlink", linkPath, target);
            }
        }
    }

    /// <summary>Creates hard link <paramref name="newPath"/> to <paramref name="existing"/>; a symlink at
    /// <paramref name="existing"/> is linked itself, not followed.</summary>
    public static void Link(byte[] existing, byte[] newPath)
    {
        ArgumentNullException.ThrowIfNull(existing);
        ArgumentNullException.ThrowIfNull(newPath);
        using var e = new CPath(existing, stackalloc byte[CPath.StackSize], nameof(existing));
        using var n = new CPath(newPath, stackalloc byte[CPath.StackSize], nameof(newPath));
        fixed (byte* ep = e)
        fixed (byte* np = n)
        {
            if (link(ep, np) != 0)
            {
                ThrowLast("link", existing, newPath);
            }
        }
    }

    /// <summary>
    /// mknod for <see cref="FileType.Fifo"/>, <see cref="FileType.Socket"/>, <see cref="FileType.CharDevice"/> and
    /// <see cref="FileType.BlockDevice"/>; <paramref name="rdev"/> is used for devices only. Devices need root
    /// (EPERM otherwise).
    /// </summary>
    public static void MakeNode(byte[] path, FileType type, uint mode, ulong rdev)
    {
        ArgumentNullException.ThrowIfNull(path);
        uint typeBits = type switch
        {
            FileType.Fifo => S_IFIFO,
            FileType.Socket => S_IFSOCK,
            FileType.CharDevice => S_IFCHR,
            FileType.BlockDevice => S_IFBLK,
            _ => throw new ArgumentException($"mknod cannot make a {type}", nameof(type)),
        };
        ulong dev = type is FileType.CharDevice or FileType.BlockDevice ? rdev : 0;
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        fixed (byte* ptr = p)
        {
            if (mknod(ptr, typeBits | (mode & 0xFFF), dev) != 0)
            {
                ThrowLast("mknod", path);
            }
        }
    }

    public static void Unlink(byte[] path) => PathCall(path, "unlink", &unlink);

    public static void RemoveDirectory(byte[] path) => PathCall(path, "rmdir", &rmdir);

    /// <summary>rename(2): replaces an existing <paramref name="to"/> atomically; EXDEV across file systems.</summary>
    public static void Rename(byte[] from, byte[] to)
    {
        ArgumentNullException.ThrowIfNull(from);
        ArgumentNullException.ThrowIfNull(to);
        using var f = new CPath(from, stackalloc byte[CPath.StackSize], nameof(from));
        using var t = new CPath(to, stackalloc byte[CPath.StackSize], nameof(to));
        fixed (byte* fp = f)
        fixed (byte* tp = t)
        {
            if (rename(fp, tp) != 0)
            {
                ThrowLast("rename", from, to);
            }
        }
    }

    private static void PathCall(byte[] path, string operation, delegate*<byte*, int> call)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        fixed (byte* ptr = p)
        {
            if (call(ptr) != 0)
            {
                ThrowLast(operation, path);
            }
        }
    }

    // ---------------------------------------------------------------- opening and I/O

    /// <summary>
    /// Opens a file for reading: O_RDONLY|O_NOFOLLOW|O_CLOEXEC, with O_NOATIME when allowed (only the owner or
    /// root may; EPERM makes it retry without). A symlink at the final component fails with ELOOP. Opening a FIFO
    /// blocks until a writer appears: callers check the type first. The handle works with
    /// <see cref="RandomAccess"/> and the methods here; the caller disposes it.
    /// </summary>
    public static SafeFileHandle OpenRead(byte[] path)
    {
        // O_NONBLOCK: a FIFO swapped in for a file after its lstat must not block the open (it has no effect on
        // regular files); callers check the type of what they opened with FStat.
        int fd = Open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOATIME | O_NONBLOCK, 0, out int errno);
        if (fd < 0 && errno == Errno.EPERM)
        {
            fd = Open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0, out errno);
        }

        if (fd < 0)
        {
            ThrowErrno(errno, "open", path);
        }

        return new SafeFileHandle(fd, ownsHandle: true);
    }

    /// <summary>Opens a directory (O_RDONLY|O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC): ENOTDIR for anything else,
    /// including a symlink to a directory.</summary>
    public static SafeFileHandle OpenDirectory(byte[] path) =>
        new(OpenOrThrow(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0), ownsHandle: true);

    /// <summary>
    /// Opens <paramref name="path"/> for writing, creating it with <paramref name="mode"/> (subject to the umask)
    /// if missing, emptying it if <paramref name="truncate"/>. Refuses to follow a symlink at the final component,
    /// dangling or not (ELOOP), so a restore cannot be redirected outside its target by a planted link.
    /// </summary>
    public static SafeFileHandle CreateFile(byte[] path, uint mode, bool truncate)
    {
        int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (truncate ? O_TRUNC : 0);
        return new SafeFileHandle(OpenOrThrow(path, flags, mode & 0xFFF), ownsHandle: true);
    }

    /// <summary>Opens an existing file read-write (O_RDWR|O_NOFOLLOW|O_CLOEXEC); never creates.</summary>
    public static SafeFileHandle OpenWrite(byte[] path) =>
        new(OpenOrThrow(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC, 0), ownsHandle: true);

    private static int OpenOrThrow(byte[] path, int flags, uint mode)
    {
        int fd = Open(path, flags, mode, out int errno);
        if (fd < 0)
        {
            ThrowErrno(errno, "open", path);
        }

        return fd;
    }

    private static int Open(byte[] path, int flags, uint mode, out int errno)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        fixed (byte* ptr = p)
        {
            while (true)
            {
                int fd = open(ptr, flags, mode);
                if (fd >= 0)
                {
                    errno = 0;
                    return fd;
                }

                errno = Marshal.GetLastPInvokeError();
                if (errno != Errno.EINTR)
                {
                    return -1;
                }
            }
        }
    }

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>; returns how many
    /// (fewer near the end, 0 at or after it).</summary>
    public static int PRead(SafeFileHandle f, Span<byte> buffer, long offset)
    {
        using var fd = new FdLease(f);
        fixed (byte* b = buffer)
        {
            while (true)
            {
                nint n = pread(fd.Fd, b, (nuint)buffer.Length, offset);
                if (n >= 0)
                {
                    return (int)n;
                }

                int errno = Marshal.GetLastPInvokeError();
                if (errno != Errno.EINTR)
                {
                    ThrowErrno(errno, "pread", null);
                }
            }
        }
    }

    /// <summary>Writes all of <paramref name="data"/> at <paramref name="offset"/>, looping over short writes.</summary>
    public static void PWriteAll(SafeFileHandle f, ReadOnlySpan<byte> data, long offset)
    {
        using var fd = new FdLease(f);
        fixed (byte* b = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = pwrite(fd.Fd, b + done, (nuint)(data.Length - done), offset + done);
                if (n > 0)
                {
                    done += (int)n;
                    continue;
                }

                int errno = n == 0 ? Errno.ENOSPC : Marshal.GetLastPInvokeError();
                if (errno != Errno.EINTR)
                {
                    ThrowErrno(errno, "pwrite", null);
                }
            }
        }
    }

    /// <summary>The first offset at or after <paramref name="offset"/> that holds data (lseek SEEK_DATA), or -1
    /// when only a hole follows (ENXIO). File systems without hole tracking report the whole file as data.</summary>
    public static long SeekData(SafeFileHandle f, long offset) => Seek(f, offset, SEEK_DATA, "lseek SEEK_DATA");

    /// <summary>The first hole at or after <paramref name="offset"/> (lseek SEEK_HOLE); the end of the file counts as
    /// a hole. -1 when <paramref name="offset"/> is at or past the end (ENXIO).</summary>
    public static long SeekHole(SafeFileHandle f, long offset) => Seek(f, offset, SEEK_HOLE, "lseek SEEK_HOLE");

    /// <summary>The size of a file or block device: the offset of its end (lseek SEEK_END), which block devices report too.</summary>
    public static long SeekEnd(SafeFileHandle f) => Seek(f, 0, 2, "lseek SEEK_END");

    private static long Seek(SafeFileHandle f, long offset, int whence, string operation)
    {
        using var fd = new FdLease(f);
        long result = lseek(fd.Fd, offset, whence);
        if (result >= 0)
        {
            return result;
        }

        int errno = Marshal.GetLastPInvokeError();
        if (errno == Errno.ENXIO)
        {
            return -1;
        }

        ThrowErrno(errno, operation, null);
        return -1;
    }

    public static void FTruncate(SafeFileHandle f, long length)
    {
        using var fd = new FdLease(f);
        while (ftruncate(fd.Fd, length) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Errno.EINTR)
            {
                ThrowErrno(errno, "ftruncate", null);
            }
        }
    }

    /// <summary>
    /// Freezes the filesystem mounted at <paramref name="mountPoint"/> (FIFREEZE): pending writes are flushed and new
    /// ones wait until <see cref="Thaw"/>. The caller must not write to that filesystem meanwhile, or it waits forever.
    /// </summary>
    public static void Freeze(string mountPoint) => FreezeIoctl(mountPoint, FIFREEZE, "ioctl FIFREEZE");

    public static void Thaw(string mountPoint) => FreezeIoctl(mountPoint, FITHAW, "ioctl FITHAW");

    private static void FreezeIoctl(string mountPoint, uint request, string operation)
    {
        byte[] path = PosixPath.FromString(mountPoint);
        using var dir = OpenDirectory(path);
        using var fd = new FdLease(dir);
        if (ioctl(fd.Fd, request, 0) != 0)
        {
            ThrowErrno(Marshal.GetLastPInvokeError(), operation, path);
        }
    }

    /// <summary>
    /// Makes a range of a regular file a hole (it reads as zeros and takes no space). False when the file system
    /// cannot (EOPNOTSUPP): the caller writes zeros instead.
    /// </summary>
    public static bool PunchHole(SafeFileHandle f, long offset, long length)
    {
        using var fd = new FdLease(f);
        while (fallocate(fd.Fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Errno.EOPNOTSUPP)
            {
                return false;
            }

            if (errno != Errno.EINTR)
            {
                ThrowErrno(errno, "fallocate", null);
            }
        }

        return true;
    }

    /// <summary>
    /// Starts writing back the dirty pages of a range without waiting for them (sync_file_range with
    /// SYNC_FILE_RANGE_WRITE): a long sequence of writes then overlaps the disk's work with the writer's, and the
    /// closing fsync has little left to do. No durability promise; a failure is ignored (fsync reports it).
    /// </summary>
    public static void StartWriteBack(SafeFileHandle f, long offset, long length)
    {
        using var fd = new FdLease(f);
        _ = sync_file_range(fd.Fd, offset, length, 2 /* SYNC_FILE_RANGE_WRITE */);
    }

    public static void FSync(SafeFileHandle f)
    {
        using var fd = new FdLease(f);
        while (fsync(fd.Fd) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Errno.EINTR)
            {
                ThrowErrno(errno, "fsync", null);
            }
        }
    }

    /// <summary>Tells the kernel the whole file will be read sequentially (larger read-ahead).</summary>
    public static void FAdviseSequential(SafeFileHandle f) => FAdvise(f, 0, 0, POSIX_FADV_SEQUENTIAL);

    /// <summary>Lets the kernel drop cached pages of a range already read, so a backup does not evict the
    /// page cache of the running system. A <paramref name="length"/> of 0 means to the end of the file.</summary>
    public static void FAdviseDontNeed(SafeFileHandle f, long offset, long length) =>
        FAdvise(f, offset, length, POSIX_FADV_DONTNEED);

    private static void FAdvise(SafeFileHandle f, long offset, long length, int advice)
    {
        using var fd = new FdLease(f);
        int error = posix_fadvise(fd.Fd, offset, length, advice);
        if (error != 0)
        {
            ThrowErrno(error, "posix_fadvise", null);
        }
    }

    // ---------------------------------------------------------------- ownership, modes, times

    /// <summary>Sets owner and group without following a symlink (the link itself changes). Needs root, except
    /// for changing the group to one of the caller's groups. Clears setuid/setgid on files: call before
    /// <see cref="Chmod"/>.</summary>
    public static void LChown(byte[] path, uint uid, uint gid)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        fixed (byte* ptr = p)
        {
            if (lchown(ptr, uid, gid) != 0)
            {
                ThrowLast("lchown", path);
            }
        }
    }

    /// <summary>
    /// Sets the permission bits (07777) without following a symlink at the final component. Linux has no mode
    /// on symlinks (they are always 0777), so for a symlink this does nothing: symlink modes are not set.
    /// Uses fchmodat(AT_SYMLINK_NOFOLLOW); where that is unavailable (no /proc, old kernel) it checks with
    /// lstat that the entry is no symlink and falls back to chmod.
    /// </summary>
    public static void Chmod(byte[] path, uint mode)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        fixed (byte* ptr = p)
        {
            if (fchmodat(AT_FDCWD, ptr, mode & 0xFFF, AT_SYMLINK_NOFOLLOW) == 0)
            {
                return;
            }

            int errno = Marshal.GetLastPInvokeError();
            if (errno != Errno.EOPNOTSUPP)
            {
                ThrowErrno(errno, "fchmodat", path);
            }

            if (!TryLStat(path, out var stat, out errno))
            {
                ThrowErrno(errno, "statx", path);
            }

            if (stat.Type == FileType.Symlink)
            {
                return;
            }

            if (chmod(ptr, mode & 0xFFF) != 0)
            {
                ThrowLast("chmod", path);
            }
        }
    }

    /// <summary>Sets access and modification times to the nanosecond (utimensat with AT_SYMLINK_NOFOLLOW, so a
    /// symlink's own times change). Times are nanoseconds since the Unix epoch and may be negative.</summary>
    public static void SetTimes(byte[] path, long accessTimeNs, long modifyTimeNs)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        Timespec* times = stackalloc Timespec[2];
        times[0] = ToTimespec(accessTimeNs);
        times[1] = ToTimespec(modifyTimeNs);
        fixed (byte* ptr = p)
        {
            if (utimensat(AT_FDCWD, ptr, times, AT_SYMLINK_NOFOLLOW) != 0)
            {
                ThrowLast("utimensat", path);
            }
        }
    }

    // ---------------------------------------------------------------- extended attributes

    /// <summary>The names of the extended attributes of <paramref name="path"/> (not following a symlink), e.g.
    /// <c>user.comment</c>, <c>security.selinux</c>, <c>system.posix_acl_access</c>. Empty when the file system
    /// does not support xattrs.</summary>
    public static List<byte[]> ListXattrs(byte[] path)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        var names = new List<byte[]>();
        fixed (byte* ptr = p)
        {
            byte* small = stackalloc byte[XattrStackSize];
            nint n = llistxattr(ptr, small, XattrStackSize);
            if (n >= 0)
            {
                SplitNames(new ReadOnlySpan<byte>(small, (int)n), names);
                return names;
            }

            // The list did not fit (ERANGE) or listing failed: ask for its size and read it, retrying if it grew.
            while (true)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Errno.EOPNOTSUPP)
                {
                    return names;
                }

                if (errno != Errno.ERANGE)
                {
                    ThrowErrno(errno, "llistxattr", path);
                }

                nint size = llistxattr(ptr, null, 0);
                if (size < 0)
                {
                    continue;
                }

                byte[] rented = ArrayPool<byte>.Shared.Rent((int)size + 1);
                try
                {
                    fixed (byte* b = rented)
                    {
                        n = llistxattr(ptr, b, (nuint)rented.Length);
                    }

                    if (n >= 0)
                    {
                        SplitNames(rented.AsSpan(0, (int)n), names);
                        return names;
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(rented);
                }
            }
        }
    }

    private static void SplitNames(ReadOnlySpan<byte> list, List<byte[]> names)
    {
        while (!list.IsEmpty)
        {
            int end = list.IndexOf((byte)0);
            if (end < 0)
            {
                end = list.Length;
            }

            if (end > 0)
            {
                names.Add(list[..end].ToArray());
            }

            list = end < list.Length ? list[(end + 1)..] : default;
        }
    }

    /// <summary>The value of extended attribute <paramref name="name"/> (not following a symlink), or null when the
    /// entry has no such attribute (ENODATA).</summary>
    public static byte[]? GetXattr(byte[] path, byte[] name)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(name);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        using var a = new CPath(name, stackalloc byte[PosixPath.MaxNameLength + 1], nameof(name));
        fixed (byte* ptr = p)
        fixed (byte* np = a)
        {
            byte* small = stackalloc byte[XattrStackSize];
            nint n = lgetxattr(ptr, np, small, XattrStackSize);
            if (n >= 0)
            {
                return new ReadOnlySpan<byte>(small, (int)n).ToArray();
            }

            while (true)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Errno.ENODATA)
                {
                    return null;
                }

                if (errno != Errno.ERANGE)
                {
                    ThrowErrno(errno, "lgetxattr", path);
                }

                nint size = lgetxattr(ptr, np, null, 0);
                if (size < 0)
                {
                    continue;
                }

                byte[] rented = ArrayPool<byte>.Shared.Rent((int)size + 1);
                try
                {
                    fixed (byte* b = rented)
                    {
                        n = lgetxattr(ptr, np, b, (nuint)rented.Length);
                    }

                    if (n >= 0)
                    {
                        return rented.AsSpan(0, (int)n).ToArray();
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(rented);
                }
            }
        }
    }

    /// <summary>Creates or replaces extended attribute <paramref name="name"/> (not following a symlink). Unprivileged
    /// callers can set <c>user.*</c> only, and not on symlinks or device nodes (EPERM).</summary>
    public static void SetXattr(byte[] path, byte[] name, byte[] value)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(value);
        using var p = new CPath(path, stackalloc byte[CPath.StackSize]);
        using var a = new CPath(name, stackalloc byte[PosixPath.MaxNameLength + 1], nameof(name));
        fixed (byte* ptr = p)
        fixed (byte* np = a)
        fixed (byte* vp = value)
        {
            if (lsetxattr(ptr, np, vp, (nuint)value.Length, 0) != 0)
            {
                ThrowLast("lsetxattr", path);
            }
        }
    }

    // ---------------------------------------------------------------- users and groups

    private static readonly ConcurrentDictionary<uint, string?> UserNames = new();
    private static readonly ConcurrentDictionary<uint, string?> GroupNames = new();
    private static readonly ConcurrentDictionary<string, uint?> UserIds = new(StringComparer.Ordinal);
    private static readonly ConcurrentDictionary<string, uint?> GroupIds = new(StringComparer.Ordinal);

    /// <summary>The name of user <paramref name="uid"/> (getpwuid_r through NSS), or null if there is none.
    /// Cached for the life of the process, misses included.</summary>
    public static string? UserName(uint uid) => UserNames.GetOrAdd(uid, static id => LookUpUser(id, null).Name);

    /// <summary>The name of group <paramref name="gid"/> (getgrgid_r), or null; cached.</summary>
    public static string? GroupName(uint gid) => GroupNames.GetOrAdd(gid, static id => LookUpGroup(id, null).Name);

    /// <summary>The id of user <paramref name="name"/> (getpwnam_r), or null; cached.</summary>
    public static uint? UserId(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return UserIds.GetOrAdd(name, static n => LookUpUser(0, n).Id);
    }

    /// <summary>The id of group <paramref name="name"/> (getgrnam_r), or null; cached.</summary>
    public static uint? GroupId(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return GroupIds.GetOrAdd(name, static n => LookUpGroup(0, n).Id);
    }

    /// <summary>Whether the process runs with effective uid 0 (may chown, mknod devices, set trusted.* xattrs).</summary>
    public static bool IsRoot => geteuid() == 0;

    private static (string? Name, uint? Id) LookUpUser(uint uid, string? name)
    {
        byte[]? nameBytes = name is null ? null : NulTerminated(name);
        for (int size = 1024; ; size *= 2)
        {
            byte[] buffer = ArrayPool<byte>.Shared.Rent(size);
            try
            {
                Passwd entry;
                Passwd* result = null;
                int error;
                fixed (byte* b = buffer)
                fixed (byte* n = nameBytes)
                {
                    error = nameBytes is null
                        ? getpwuid_r(uid, &entry, b, (nuint)buffer.Length, &result)
                        : getpwnam_r(n, &entry, b, (nuint)buffer.Length, &result);
                    if (error == 0 && result != null)
                    {
                        return (Marshal.PtrToStringUTF8((nint)result->Name), result->Uid);
                    }
                }

                if (!RetryLookUp(error, size, name is null ? "getpwuid_r" : "getpwnam_r"))
                {
                    return (null, null);
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    private static (string? Name, uint? Id) LookUpGroup(uint gid, string? name)
    {
        byte[]? nameBytes = name is null ? null : NulTerminated(name);
        for (int size = 1024; ; size *= 2)
        {
            byte[] buffer = ArrayPool<byte>.Shared.Rent(size);
            try
            {
                Group entry;
                Group* result = null;
                int error;
                fixed (byte* b = buffer)
                fixed (byte* n = nameBytes)
                {
                    error = nameBytes is null
                        ? getgrgid_r(gid, &entry, b, (nuint)buffer.Length, &result)
                        : getgrnam_r(n, &entry, b, (nuint)buffer.Length, &result);
                    if (error == 0 && result != null)
                    {
                        return (Marshal.PtrToStringUTF8((nint)result->Name), result->Gid);
                    }
                }

                if (!RetryLookUp(error, size, name is null ? "getgrgid_r" : "getgrnam_r"))
                {
                    return (null, null);
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    // Decides after a failed or empty get*_r call: retry (larger buffer, EINTR), report "no such entry",
    // or throw. glibc may report a missing entry as 0 with a null result or as ENOENT/ESRCH/EBADF/EPERM.
    private static bool RetryLookUp(int error, int size, string operation)
    {
        switch (error)
        {
            case Errno.ERANGE when size < 1 << 20:
            case Errno.EINTR:
                return true;
            case 0:
            case Errno.ENOENT:
            case 3: // ESRCH
            case Errno.EBADF:
            case Errno.EPERM:
                return false;
            default:
                ThrowErrno(error, operation, null);
                return false;
        }
    }

    private static byte[] NulTerminated(string s)
    {
        var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
        Encoding.UTF8.GetBytes(s, bytes);
        return bytes;
    }

    // ---------------------------------------------------------------- device numbers

    /// <summary>Major and minor of a device number, with glibc's encoding (gnu_dev_major/gnu_dev_minor).</summary>
    public static (ulong Major, ulong Minor) SplitDevice(ulong dev) => (
        ((dev & 0x0000_0000_000f_ff00UL) >> 8) | ((dev & 0xffff_f000_0000_0000UL) >> 32),
        (dev & 0x0000_0000_0000_00ffUL) | ((dev & 0x0000_0fff_fff0_0000UL) >> 12));

    /// <summary>A device number from major and minor, with glibc's encoding (gnu_dev_makedev).</summary>
    public static ulong MakeDevice(ulong major, ulong minor) =>
        ((major & 0x0000_0fffUL) << 8) | ((major & 0xffff_f000UL) << 32) |
        (minor & 0x0000_00ffUL) | ((minor & 0xffff_ff00UL) << 12);

    // ---------------------------------------------------------------- errors

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowLast(string operation, byte[]? path, byte[]? otherPath = null) =>
        throw new PosixException(Marshal.GetLastPInvokeError(), operation, path, otherPath);

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowErrno(int errno, string operation, byte[]? path) =>
        throw new PosixException(errno, operation, path);
}
