using System.Globalization;
using Haven.Core;
using Haven.Core.Posix;
using Microsoft.Win32.SafeHandles;

namespace Haven.Images;

/// <summary>
/// A short-lived LVM snapshot of a logical volume that is in use (mounted, or held open by something else), so that an
/// image backup reads one instant of it while writes go on. Creating the snapshot suspends the volume for a moment,
/// and the kernel freezes a filesystem mounted on it meanwhile, so the snapshot is as consistent as a frozen
/// filesystem; unlike a freeze, writers wait only for that moment, not for the whole backup. The snapshot's
/// copy-on-write area takes free extents of the volume group (by default a tenth of the volume, at least 64 MiB, at
/// most what is free) and is removed when the backup ends. If it fills before the backup is done, the kernel drops it
/// and the backup fails with a message that says so. Snapshots that a killed backup left behind (tagged
/// haven-image-backup and named haven-PID-VOLUME, with no process PID any more) are removed the next time. A thin
/// volume gets a thin snapshot in its pool (none when the pool is more than 90 % full). Snapshots, RAID and mirrored
/// volumes are read as they are, frozen if mounted.
/// </summary>
public sealed class LvmSnapshot : IDisposable
{
    public const long MinimumSize = 64L << 20;

    /// <summary>The LVM tag of the snapshots Haven makes: only snapshots with it are ever removed as leftovers.</summary>
    public const string Tag = "haven-image-backup";

    /// <summary>A thin pool fuller than this (data or metadata, in percent) gets no snapshot.</summary>
    public const double MaxThinPoolUse = 90;

    private string? _name;
    private SafeFileHandle? _handle;

    private LvmSnapshot(string name, string device, string origin)
    {
        _name = name;
        Device = device;
        Origin = origin;
    }

    /// <summary>The snapshot's block device.</summary>
    public string Device { get; }

    /// <summary>The snapshot's block device, open for reading until <see cref="End"/>.</summary>
    public SafeFileHandle Handle => _handle ?? throw new ObjectDisposedException(nameof(LvmSnapshot));

    /// <summary>The logical volume, as VG/LV.</summary>
    public string Origin { get; }

    /// <summary>The snapshot, as VG/LV.</summary>
    public string Name => _name ?? "";

    /// <summary>
    /// Takes a snapshot of the block device <paramref name="device"/> when it is a classic or thin LVM logical volume
    /// in use; null when it is not one, or not in use, or when the snapshot cannot be made (a note says why).
    /// </summary>
    public static LvmSnapshot? TryBegin(string device, bool mounted, long? size, List<string> notes)
    {
        string dmName;
        try
        {
            var stat = Posix.LStat(PosixPath.FromString(RealPath.Of(device)));
            var (major, minor) = Posix.SplitDevice(stat.RDev);
            string dm = $"/sys/dev/block/{major}:{minor}/dm";
            if (stat.Type != FileType.BlockDevice || !File.Exists($"{dm}/uuid") || !File.ReadAllText($"{dm}/uuid").StartsWith("LVM-", StringComparison.Ordinal))
            {
                return null;
            }

            dmName = File.ReadAllText($"{dm}/name").Trim();
        }
        catch (Exception e) when (e is PosixException or IOException or UnauthorizedAccessException)
        {
            return null;
        }

        // The backup holds the volume open itself: in use means mounted, or open more than once.
        var (code, output) = Tool.Run("dmsetup", "info", "--columns", "--noheadings", "-o", "open", dmName);
        if (!mounted && code == 0 && int.TryParse(output.Trim(), CultureInfo.InvariantCulture, out int opens) && opens <= 1)
        {
            return null; // nothing else holds it open: nothing writes it while it is read
        }

        (code, output) = Tool.Run("dmsetup", "splitname", "--noheadings", "--separator", "/", "-o", "vg_name,lv_name", dmName, "LVM");
        string[] names = output.Trim().Split('/');
        if (code != 0 || names.Length < 2 || names[0].Length == 0 || names[1].Length == 0)
        {
            notes.Add($"{device} is an LVM volume, but its name could not be read ({Tool.LastLine(output)}); it is read without a snapshot");
            return null;
        }

        string vg = names[0], lv = names[1], origin = $"{vg}/{lv}";
        (code, output) = Tool.Run("lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|", "-o", "lv_attr,lv_size,vg_extent_size,vg_free_count,pool_lv", origin);
        string[] fields = output.Trim().Split('|', StringSplitOptions.TrimEntries);
        if (code != 0 || fields.Length < 5 || fields[0].Length < 6
            || !long.TryParse(fields[1], CultureInfo.InvariantCulture, out long lvSize) || !long.TryParse(fields[2], CultureInfo.InvariantCulture, out long extent)
            || !long.TryParse(fields[3], CultureInfo.InvariantCulture, out long freeExtents) || extent <= 0)
        {
            notes.Add($"{origin} is an LVM volume, but lvs could not describe it ({Tool.LastLine(output)}); it is read without a snapshot");
            return null;
        }

        string attr = fields[0], pool = fields[4];
        if (attr[0] is not ('-' or 'o' or 'V'))
        {
            notes.Add($"{origin} is neither a classic nor a thin LVM volume (lv_attr {attr}); it is read without an LVM snapshot");
            return null;
        }

        RemoveLeftovers(vg, notes);
        string name = $"haven-{Environment.ProcessId}-{lv}";
        name = name[..Math.Min(name.Length, 120)];
        return attr[0] == 'V' ? BeginThin(vg, name, origin, pool, notes) : BeginClassic(vg, name, origin, lvSize, extent, freeExtents, size, notes);
    }

    /// <summary>A classic snapshot, with a copy-on-write area of its own taken from the volume group's free extents.</summary>
    private static LvmSnapshot? BeginClassic(string vg, string name, string origin, long lvSize, long extent, long freeExtents, long? size, List<string> notes)
    {
        var (code, output) = Tool.Run("vgs", "--noheadings", "-o", "vg_free_count", vg);
        if (code == 0 && long.TryParse(output.Trim(), CultureInfo.InvariantCulture, out long nowFree))
        {
            freeExtents = nowFree;
        }

        long wanted = size ?? Math.Max(MinimumSize, lvSize / 10);
        long extents = Math.Min(freeExtents, (wanted + extent - 1) / extent);
        if (extents <= 0 || extents * extent < Math.Min(wanted, MinimumSize))
        {
            notes.Add($"volume group {vg} has {freeExtents * extent / (1 << 20)} MiB free, too little for a snapshot of {origin} ({wanted / (1 << 20)} MiB wanted); it is read without one");
            return null;
        }

        (code, output) = Tool.Run("lvcreate", "--quiet", "--yes", "--snapshot", "--addtag", Tag, "--name", name, "--extents", extents.ToString(CultureInfo.InvariantCulture), origin);
        return Made(vg, name, origin, code, output, $"{extents * extent / (1 << 20)} MiB for changes made meanwhile", notes);
    }

    /// <summary>
    /// A thin snapshot: it shares the origin's pool and takes room there only as the origin is written. Not made when
    /// the pool is nearly full, since writes to the origin would then fail for lack of room, not only the backup.
    /// </summary>
    private static LvmSnapshot? BeginThin(string vg, string name, string origin, string pool, List<string> notes)
    {
        var (code, output) = Tool.Run("lvs", "--noheadings", "-o", "data_percent,metadata_percent", $"{vg}/{pool}");
        var used = output.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (code != 0 || used.Length < 2 || !double.TryParse(used[0], CultureInfo.InvariantCulture, out double data) || !double.TryParse(used[1], CultureInfo.InvariantCulture, out double metadata))
        {
            notes.Add($"the thin pool {vg}/{pool} of {origin} could not be described ({Tool.LastLine(output)}); it is read without an LVM snapshot");
            return null;
        }

        if (data > MaxThinPoolUse || metadata > MaxThinPoolUse)
        {
            notes.Add($"the thin pool {vg}/{pool} of {origin} is {Math.Max(data, metadata):0.#} % full; it is read without an LVM snapshot");
            return null;
        }

        (code, output) = Tool.Run("lvcreate", "--quiet", "--yes", "--snapshot", "--addtag", Tag, "--setactivationskip", "n", "--activate", "y", "--name", name, origin);
        return Made(vg, name, origin, code, output, $"a thin snapshot in pool {vg}/{pool}, {data:0.#} % used", notes);
    }

    /// <summary>The snapshot that lvcreate made, once its device exists.</summary>
    private static LvmSnapshot? Made(string vg, string name, string origin, int code, string output, string what, List<string> notes)
    {
        if (code != 0)
        {
            notes.Add($"an LVM snapshot of {origin} could not be made ({Tool.LastLine(output)}); it is read without one");
            return null;
        }

        var snapshot = new LvmSnapshot($"{vg}/{name}", $"/dev/{vg}/{name}", origin);
        for (int i = 0; i < 50 && !File.Exists(snapshot.Device); i++)
        {
            Thread.Sleep(100); // udev makes the link
        }

        try
        {
            snapshot._handle = Posix.OpenRead(PosixPath.FromString(RealPath.Of(snapshot.Device))); // a udev link
        }
        catch (PosixException e)
        {
            snapshot.Dispose();
            notes.Add($"the LVM snapshot {vg}/{name} of {origin} could not be opened ({PosixException.Describe(e.Errno)}); it is read without one");
            return null;
        }

        notes.Add($"read from LVM snapshot {snapshot.Name} of {origin} ({what})");
        return snapshot;
    }

    /// <summary>Whether the kernel dropped the snapshot because its copy-on-write area filled.</summary>
    public bool Invalid()
    {
        var (code, output) = Tool.Run("lvs", "--noheadings", "-o", "lv_attr", Name);
        string attr = output.Trim();
        return code == 0 && attr.Length >= 5 && attr[4] is 'I' or 'S';
    }

    /// <summary>The error of a backup whose snapshot the kernel dropped (see <see cref="Invalid"/>).</summary>
    public HavenException Dropped() => new(ErrorCode.Failed,
        $"the LVM snapshot {Name} filled up with changes to {Origin} before the backup had read it all, and the kernel dropped it; no snapshot was saved",
        "give a larger --lvm-snapshot-size, or back up when less is written");

    /// <summary>Removes the snapshot; returns why that failed, or null.</summary>
    public string? End()
    {
        Interlocked.Exchange(ref _handle, null)?.Dispose(); // an open snapshot cannot be removed
        if (Interlocked.Exchange(ref _name, null) is not { } name)
        {
            return null;
        }

        var (code, output) = Tool.Run("lvremove", "--quiet", "--force", name);
        return code == 0 ? null : $"the LVM snapshot {name} could not be removed ({Tool.LastLine(output)}): remove it with lvremove {name}, or it keeps taking space in its volume group";
    }

    public void Dispose() => End();

    /// <summary>
    /// Snapshots with Haven's tag, named haven-PID-…, whose process is gone: left by a backup that was killed. A volume
    /// that is no snapshot, or has no such tag, is never touched, whatever its name.
    /// </summary>
    private static void RemoveLeftovers(string vg, List<string> notes)
    {
        var (code, output) = Tool.Run("lvs", "--noheadings", "--separator", "|", "-o", "lv_name,lv_attr,lv_tags", vg);
        if (code != 0)
        {
            return;
        }

        foreach (string line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var columns = line.Split('|', StringSplitOptions.TrimEntries);
            if (columns.Length < 3 || columns[1].Length == 0 || columns[1][0] is not ('s' or 'S' or 'V') || !columns[2].Split(',').Contains(Tag))
            {
                continue;
            }

            string lv = columns[0];
            var parts = lv.Split('-', 3);
            if (parts.Length == 3 && parts[0] == "haven" && int.TryParse(parts[1], CultureInfo.InvariantCulture, out int pid) && pid != Environment.ProcessId
                && !Directory.Exists($"/proc/{pid}") && Tool.Run("lvremove", "--quiet", "--force", $"{vg}/{lv}").Code == 0)
            {
                notes.Add($"removed {vg}/{lv}, an LVM snapshot that an interrupted backup left behind");
            }
        }
    }
}
