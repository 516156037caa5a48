namespace Haven.Images;

/// <summary>Disks are often named by links (/dev/disk/by-id/…): the absolute path of what a name finally points to.</summary>
internal static class RealPath
{
    public static string Of(string path)
    {
        string full = Path.GetFullPath(path);
        try
        {
            return File.Exists(full) ? File.ResolveLinkTarget(full, returnFinalTarget: true)?.FullName ?? full : full;
        }
        catch (IOException)
        {
            return full;
        }
    }
}
