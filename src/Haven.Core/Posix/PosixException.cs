using System.Runtime.InteropServices;

namespace Haven.Core.Posix;

/// <summary>Linux x86_64 errno values that callers test for.</summary>
public static class Errno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int ENXIO = 6;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int EACCES = 13;
    public const int EEXIST = 17;
    public const int EXDEV = 18;
    public const int ENOTDIR = 20;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int ESPIPE = 29;
    public const int EROFS = 30;
    public const int ERANGE = 34;
    public const int ENAMETOOLONG = 36;
    public const int ENOTEMPTY = 39;
    public const int ELOOP = 40;
    public const int ENODATA = 61;
    public const int EOPNOTSUPP = 95;

    /// <summary>The same number as <see cref="EOPNOTSUPP"/> on Linux.</summary>
    public const int ENOTSUP = EOPNOTSUPP;

    public const int EDQUOT = 122;
}

/// <summary>
/// A failed system call: the errno, the operation (the libc function name) and the path it was given.
/// The message reads like <c>open /some/path: Permission denied</c>; the path is shown as UTF-8 with
/// undecodable bytes written as <c>\xNN</c>.
/// </summary>
public sealed class PosixException : IOException
{
    public PosixException(int errno, string operation, byte[]? path, byte[]? otherPath = null)
        : base(FormatMessage(errno, operation, path, otherPath))
    {
        Errno = errno;
        Operation = operation;
        Path = path;
        OtherPath = otherPath;
    }

    /// <summary>The errno the call failed with; compare with the constants of the <c>Errno</c> class.</summary>
    public int Errno { get; }

    /// <summary>The libc function that failed, e.g. <c>open</c>, <c>statx</c>, <c>rename</c>.</summary>
    public string Operation { get; }

    /// <summary>The path the call was given, without NUL terminator; null for calls on an open handle.</summary>
    public byte[]? Path { get; }

    /// <summary>For calls with two paths (rename, link, symlink), the second one; null otherwise.</summary>
    public byte[]? OtherPath { get; }

    /// <summary>The text of an errno, from the C library's <c>strerror</c>.</summary>
    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    private static string FormatMessage(int errno, string operation, byte[]? path, byte[]? otherPath)
    {
        string text = Describe(errno);
        if (path is null)
        {
            return $"{operation}: {text}";
        }

        return otherPath is null
            ? $"{operation} {PosixPath.ToDisplay(path)}: {text}"
            : $"{operation} {PosixPath.ToDisplay(path)} -> {PosixPath.ToDisplay(otherPath)}: {text}";
    }
}
