namespace Haven.Core.Posix;

/// <summary>
/// The kind of a file system entry. The numbers are written into snapshots: never renumber, only append.
/// </summary>
public enum FileType : byte
{
    Unknown = 0,
    Regular = 1,
    Directory = 2,
    Symlink = 3,
    CharDevice = 4,
    BlockDevice = 5,
    Fifo = 6,
    Socket = 7,
}

/// <summary>
/// What <c>statx</c> says about one entry, without following a symlink at the final component.
/// </summary>
/// <param name="Mode">Permission bits including setuid, setgid and sticky (<c>st_mode &amp; 07777</c>); no type bits.</param>
/// <param name="Device">The device holding the entry, encoded like glibc's <c>makedev</c> (see <see cref="Posix.SplitDevice"/>).</param>
/// <param name="RDev">For character and block devices, the device they stand for; 0 otherwise.</param>
/// <param name="AccessTimeNs">Nanoseconds since the Unix epoch; likewise the other two times.</param>
/// <param name="Blocks512">Allocated space in 512-byte units, whatever the file system's block size: less than
/// <see cref="Size"/> / 512 for sparse files.</param>
public readonly record struct FileStat(
    FileType Type,
    uint Mode,
    uint Uid,
    uint Gid,
    long Size,
    ulong Inode,
    ulong Device,
    ulong Links,
    ulong RDev,
    long AccessTimeNs,
    long ModifyTimeNs,
    long ChangeTimeNs,
    long Blocks512)
{
    public bool IsDirectory => Type == FileType.Directory;

    public bool IsRegular => Type == FileType.Regular;

    public bool IsSymlink => Type == FileType.Symlink;
}
