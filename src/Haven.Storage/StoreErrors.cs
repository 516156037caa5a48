namespace Haven.Storage;

/// <summary>Error sorting shared by the stores that sit on a local file system (and by writers spooling to one).</summary>
public static class StoreErrors
{
    /// <summary>
    /// A local file-system failure as a store error (<see cref="UnauthorizedAccessException"/> is access denied, an
    /// <see cref="IOException"/> is sorted by <see cref="Classify"/>), or null for any other exception.
    /// </summary>
    public static StoreException? Translate(Exception e, string message) => e switch
    {
        UnauthorizedAccessException => new StoreException(StoreErrorKind.AccessDenied, message, e),
        IOException io => new StoreException(Classify(io), message, io),
        _ => null,
    };

    /// <summary>
    /// Sorts an I/O error by its errno (which .NET puts in <see cref="Exception.HResult"/> on Unix) or Win32 code.
    /// Errors that a network file system or a busy disk may clear up are transient; the rest are permanent.
    /// </summary>
    public static StoreErrorKind Classify(IOException e)
    {
        int code = e.HResult;
        if (OperatingSystem.IsWindows())
        {
            return (code & 0xFFFF) switch
            {
                0x27 or 0x70 => StoreErrorKind.NoSpace,       // ERROR_HANDLE_DISK_FULL, ERROR_DISK_FULL
                0x05 or 0x13 => StoreErrorKind.AccessDenied,  // ERROR_ACCESS_DENIED, ERROR_WRITE_PROTECT
                0x20 or 0x21 or 0x35 or 0x40 or 0x79 => StoreErrorKind.Transient, // sharing/lock violation, network gone, timeout
                _ => StoreErrorKind.Permanent,
            };
        }

        switch (code)
        {
            case 28 or 122: // ENOSPC, EDQUOT (Linux)
                return StoreErrorKind.NoSpace;
            case 1 or 13 or 30: // EPERM, EACCES, EROFS
                return StoreErrorKind.AccessDenied;
            case 4 or 5 or 11 or 16 or 110 or 112 or 116: // EINTR, EIO, EAGAIN, EBUSY, ETIMEDOUT, EHOSTDOWN, ESTALE
                return StoreErrorKind.Transient;
        }

        // .NET reports a failed preallocation with its own message and no errno.
        return e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase)
            || e.Message.Contains("disk was full", StringComparison.OrdinalIgnoreCase)
            ? StoreErrorKind.NoSpace
            : StoreErrorKind.Permanent;
    }
}
