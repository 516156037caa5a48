using System.Buffers;
using System.Runtime.InteropServices;

namespace Haven.Core.Posix;

/// <summary>
/// glibc entry points and constants for Linux x86_64 (checked against glibc 2.36 headers). Only
/// <see cref="Posix"/> calls these; every path argument is a NUL-terminated byte string made by
/// <see cref="CPath"/>.
/// </summary>
/// <remarks>
/// <c>open</c> is variadic in C; passing the mode as a third fixed argument is what the x86_64 SysV ABI
/// expects for integer arguments, and glibc reads it only with O_CREAT.
/// </remarks>
internal static unsafe partial class LibC
{
    private const string Lib = "libc";

    public const int AT_FDCWD = -100;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const int AT_NO_AUTOMOUNT = 0x800;
    public const int AT_EMPTY_PATH = 0x1000;

    public const int O_RDONLY = 0;
    public const int O_WRONLY = 1;
    public const int O_RDWR = 2;
    public const int O_CREAT = 0x40;
    public const int O_TRUNC = 0x200;
    public const int O_DIRECTORY = 0x10000;
    public const int O_NOFOLLOW = 0x20000;
    public const int O_NOATIME = 0x40000;
    public const int O_NONBLOCK = 0x800;
    public const int O_CLOEXEC = 0x80000;

    public const int SEEK_DATA = 3;
    public const int SEEK_HOLE = 4;

    public const int POSIX_FADV_SEQUENTIAL = 2;
    public const int POSIX_FADV_DONTNEED = 4;

    public const uint STATX_BASIC_STATS = 0x7ff;

    public const uint S_IFMT = 0xF000;   // 0170000
    public const uint S_IFSOCK = 0xC000; // 0140000
    public const uint S_IFLNK = 0xA000;  // 0120000
    public const uint S_IFREG = 0x8000;  // 0100000
    public const uint S_IFBLK = 0x6000;  // 0060000
    public const uint S_IFDIR = 0x4000;  // 0040000
    public const uint S_IFCHR = 0x2000;  // 0020000
    public const uint S_IFIFO = 0x1000;  // 0010000

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int statx(int dirfd, byte* path, int flags, uint mask, StatxBuffer* buffer);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int open(byte* path, int flags, uint mode);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial nint getdents64(int fd, byte* buffer, nuint count);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial nint readlink(byte* path, byte* buffer, nuint size);

    [LibraryImport(Lib, EntryPoint = "pread64", SetLastError = true)]
    public static partial nint pread(int fd, byte* buffer, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "pwrite64", SetLastError = true)]
    public static partial nint pwrite(int fd, byte* buffer, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "lseek64", SetLastError = true)]
    public static partial long lseek(int fd, long offset, int whence);

    [LibraryImport(Lib, EntryPoint = "ftruncate64", SetLastError = true)]
    public static partial int ftruncate(int fd, long length);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int fsync(int fd);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int sync_file_range(int fd, long offset, long length, uint flags);

    /// <summary>Returns the error number instead of setting errno.</summary>
    [LibraryImport(Lib, EntryPoint = "posix_fadvise64")]
    public static partial int posix_fadvise(int fd, long offset, long length, int advice);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int mkdir(byte* path, uint mode);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int symlink(byte* target, byte* linkPath);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int link(byte* existing, byte* newPath);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int mknod(byte* path, uint mode, ulong dev);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int lchown(byte* path, uint uid, uint gid);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int fchmodat(int dirfd, byte* path, uint mode, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int chmod(byte* path, uint mode);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int utimensat(int dirfd, byte* path, Timespec* times, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial nint llistxattr(byte* path, byte* list, nuint size);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial nint lgetxattr(byte* path, byte* name, byte* value, nuint size);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int lsetxattr(byte* path, byte* name, byte* value, nuint size, int flags);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, nint arg);

    /// <summary>linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).</summary>
    public const uint FIFREEZE = 0xC0045877;
    public const uint FITHAW = 0xC0045878;

    [LibraryImport(Lib, EntryPoint = "fallocate64", SetLastError = true)]
    public static partial int fallocate(int fd, int mode, long offset, long length);

    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int unlink(byte* path);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int rmdir(byte* path);

    [LibraryImport(Lib, SetLastError = true)]
    public static partial int rename(byte* from, byte* to);

    /// <summary>The <c>get*_r</c> functions return the error number; a missing entry is 0 with a null result.</summary>
    [LibraryImport(Lib)]
    public static partial int getpwuid_r(uint uid, Passwd* pwd, byte* buffer, nuint size, Passwd** result);

    [LibraryImport(Lib)]
    public static partial int getpwnam_r(byte* name, Passwd* pwd, byte* buffer, nuint size, Passwd** result);

    [LibraryImport(Lib)]
    public static partial int getgrgid_r(uint gid, Group* grp, byte* buffer, nuint size, Group** result);

    [LibraryImport(Lib)]
    public static partial int getgrnam_r(byte* name, Group* grp, byte* buffer, nuint size, Group** result);

    [LibraryImport(Lib)]
    public static partial uint geteuid();
}

/// <summary><c>struct statx</c> from linux/stat.h: 256 bytes, offsets as commented there.</summary>
[StructLayout(LayoutKind.Explicit, Size = 256)]
internal struct StatxBuffer
{
    [FieldOffset(0x00)] public uint Mask;
    [FieldOffset(0x04)] public uint BlockSize;
    [FieldOffset(0x08)] public ulong Attributes;
    [FieldOffset(0x10)] public uint Links;
    [FieldOffset(0x14)] public uint Uid;
    [FieldOffset(0x18)] public uint Gid;
    [FieldOffset(0x1c)] public ushort Mode;
    [FieldOffset(0x20)] public ulong Inode;
    [FieldOffset(0x28)] public ulong Size;
    [FieldOffset(0x30)] public ulong Blocks;
    [FieldOffset(0x38)] public ulong AttributesMask;
    [FieldOffset(0x40)] public long AccessSeconds;
    [FieldOffset(0x48)] public uint AccessNanoseconds;
    [FieldOffset(0x50)] public long BirthSeconds;
    [FieldOffset(0x58)] public uint BirthNanoseconds;
    [FieldOffset(0x60)] public long ChangeSeconds;
    [FieldOffset(0x68)] public uint ChangeNanoseconds;
    [FieldOffset(0x70)] public long ModifySeconds;
    [FieldOffset(0x78)] public uint ModifyNanoseconds;
    [FieldOffset(0x80)] public uint RDevMajor;
    [FieldOffset(0x84)] public uint RDevMinor;
    [FieldOffset(0x88)] public uint DevMajor;
    [FieldOffset(0x8c)] public uint DevMinor;
    [FieldOffset(0x90)] public ulong MountId;
}

/// <summary><c>struct timespec</c> on x86_64.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct Timespec
{
    public long Seconds;
    public long Nanoseconds;
}

/// <summary><c>struct passwd</c> on x86_64 (48 bytes); only the fields Haven reads are named.</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
internal unsafe struct Passwd
{
    [FieldOffset(0)] public byte* Name;
    [FieldOffset(16)] public uint Uid;
    [FieldOffset(20)] public uint Gid;
}

/// <summary><c>struct group</c> on x86_64 (32 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = 32)]
internal unsafe struct Group
{
    [FieldOffset(0)] public byte* Name;
    [FieldOffset(16)] public uint Gid;
}

/// <summary>
/// A path copied into a NUL-terminated buffer for one call: the caller's stack for short paths, a buffer
/// rented from <see cref="ArrayPool{T}.Shared"/> for long ones, returned on <see cref="Dispose"/>.
/// Use as <c>using var p = new CPath(path, stackalloc byte[CPath.StackSize]); fixed (byte* ptr = p) ...</c>.
/// </summary>
internal ref struct CPath
{
    /// <summary>Covers nearly every real path; longer ones rent.</summary>
    public const int StackSize = 512;

    private readonly Span<byte> _buffer;
    private readonly byte[]? _rented;

    public CPath(ReadOnlySpan<byte> path, Span<byte> scratch, string parameterName = "path")
    {
        if (path.IndexOf((byte)0) >= 0)
        {
            ThrowNul(parameterName);
        }

        if (path.Length < scratch.Length)
        {
            _buffer = scratch;
        }
        else
        {
            _rented = ArrayPool<byte>.Shared.Rent(path.Length + 1);
            _buffer = _rented;
        }

        path.CopyTo(_buffer);
        _buffer[path.Length] = 0;
    }

    public readonly ref byte GetPinnableReference() => ref MemoryMarshal.GetReference(_buffer);

    public readonly void Dispose()
    {
        if (_rented is not null)
        {
            ArrayPool<byte>.Shared.Return(_rented);
        }
    }

    private static void ThrowNul(string parameterName) =>
        throw new ArgumentException("a path or name cannot contain a NUL byte", parameterName);
}

/// <summary>
/// Holds a reference on a <see cref="SafeHandle"/> for the length of one native call, so a concurrent
/// Dispose cannot close (and the kernel reuse) the descriptor in the middle of it.
/// </summary>
internal ref struct FdLease
{
    private readonly SafeHandle _handle;
    private bool _added;

    public FdLease(SafeHandle handle)
    {
        ArgumentNullException.ThrowIfNull(handle);
        _handle = handle;
        _added = false;
        handle.DangerousAddRef(ref _added);
        Fd = (int)handle.DangerousGetHandle();
    }

    public int Fd { get; }

    public void Dispose()
    {
        if (_added)
        {
            _added = false;
            _handle.DangerousRelease();
        }
    }
}
