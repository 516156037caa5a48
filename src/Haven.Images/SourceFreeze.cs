using Haven.Core.Posix;

namespace Haven.Images;

/// <summary>
/// Keeps a mounted source consistent while it is read: finds the filesystem mounted from the source (the device
/// itself, or an image file behind a loop device) and freezes it (FIFREEZE) for the read, when that is safe. It is
/// not safe to freeze the running system's root, or a filesystem that the backup itself writes to (repository, cache,
/// spool): every write there would wait for the thaw.
/// </summary>
public sealed class SourceFreeze : IDisposable
{
    private string? _frozen;

    private SourceFreeze(string consistency, string? frozen, string? warning)
    {
        Consistency = consistency;
        _frozen = frozen;
        Warning = warning;
    }

    /// <summary>"frozen", "unmounted" (nothing could write it), "lvm-snapshot", or "crash-consistent".</summary>
    public string Consistency { get; }

    /// <summary>Why the image is only crash-consistent, or null.</summary>
    public string? Warning { get; }

    /// <summary>Nothing frozen: the source is read from an LVM snapshot (<see cref="LvmSnapshot"/>).</summary>
    public static SourceFreeze Snapshot => new("lvm-snapshot", null, null);

    /// <summary>Freezes the filesystem mounted from <paramref name="source"/> if it may; see the class.</summary>
    public static SourceFreeze Begin(string source, bool allowed, IEnumerable<string> writtenPaths)
    {
        string? mountPoint = MountPointOf(source);
        if (mountPoint is null)
        {
            return new SourceFreeze("unmounted", null, null);
        }

        string? reason = !allowed ? "freezing was turned off (--no-freeze)"
            : mountPoint == "/" ? "it holds the running system's root, which cannot be frozen"
            : writtenPaths.FirstOrDefault(p => IsUnder(p, mountPoint)) is { } written ? $"the backup writes to {written}, which is on it"
            : null;
        if (reason is null)
        {
            try
            {
                Posix.Freeze(mountPoint);
                return new SourceFreeze("frozen", mountPoint, null);
            }
            catch (PosixException e)
            {
                reason = $"freezing it failed: {PosixException.Describe(e.Errno)}";
            }
        }

        return new SourceFreeze("crash-consistent", null, $"{source} is mounted at {mountPoint} and was read while in use, because {reason}; the image is only crash-consistent (freeze it yourself, or back up an LVM snapshot)");
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _frozen, null) is { } mountPoint)
        {
            Posix.Thaw(mountPoint);
        }
    }

    /// <summary>Where the filesystem on <paramref name="source"/> is mounted (directly, or through a loop device), or null.</summary>
    public static string? MountPointOf(string source)
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/mounts"))
            {
                var fields = line.Split(' ');
                if (fields.Length < 2 || !fields[0].StartsWith("/dev/", StringComparison.Ordinal))
                {
                    continue;
                }

                string device = RealPath.Of(fields[0]);
                string mountPoint = Unescape(fields[1]);
                if (device == source || (device.StartsWith("/dev/loop", StringComparison.Ordinal) && BackingFile(device) == source))
                {
                    return mountPoint;
                }
            }
        }
        catch (IOException)
        {
        }

        return null;
    }

    private static string? BackingFile(string loopDevice)
    {
        string path = $"/sys/block/{Path.GetFileName(loopDevice)}/loop/backing_file";
        return File.Exists(path) ? File.ReadAllText(path).Trim() : null;
    }

    /// <summary>/proc/mounts writes space, tab, newline and backslash as octal escapes.</summary>
    private static string Unescape(string field) =>
        field.Replace("\\040", " ", StringComparison.Ordinal).Replace("\\011", "\t", StringComparison.Ordinal)
            .Replace("\\012", "\n", StringComparison.Ordinal).Replace("\\134", "\\", StringComparison.Ordinal);

    private static bool IsUnder(string path, string mountPoint)
    {
        string full = Path.GetFullPath(path).TrimEnd('/') + "/";
        string mp = mountPoint.TrimEnd('/') + "/";
        return full.StartsWith(mp, StringComparison.Ordinal);
    }
}
